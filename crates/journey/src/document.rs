//! YAML documents with positions, for other file formats of the project (journey tests): read
//! a file into JSON for serde, and find where a JSON path was written, to report `FILE:LINE:COL`.

use crate::diag::{Diagnostic, Severity};
use crate::yaml::{self, Kind, Node};
use std::path::Path;

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A parsed YAML document that remembers where each node was written.
#[derive(Debug, Clone)]
pub struct Document {
    root: Node,
}

impl Document {
    /// Parses a file's text. YAML problems come back as diagnostics at their place.
    pub fn parse(file: &Path, text: &str) -> Result<Document, Vec<Diagnostic>> {
        let (root, errors) = yaml::parse(text);
        let diags: Vec<Diagnostic> = errors
            .into_iter()
            .map(|e| Diagnostic {
                file: file.to_path_buf(),
                line: e.line,
                col: e.col,
                severity: Severity::Error,
                message: e.message,
            })
            .collect();
        match root {
            Some(root) if diags.is_empty() => Ok(Document { root }),
            Some(_) => Err(diags),
            None if diags.is_empty() => Err(vec![Diagnostic {
                file: file.to_path_buf(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: "the file is empty".to_owned(),
            }]),
            None => Err(diags),
        }
    }

    /// The document as JSON: plain scalars that read as null, booleans, whole numbers or
    /// decimals become those; everything else, and every quoted scalar, is a string.
    pub fn to_json(&self) -> serde_json::Value {
        to_json(&self.root)
    }

    /// The line and column (1-based) of the deepest node on `path` that exists.
    pub fn position(&self, path: &[PathStep]) -> (usize, usize) {
        let mut node = &self.root;
        let mut place = (node.line, node.col);
        for step in path {
            let next = match (step, &node.kind) {
                (PathStep::Key(k), Kind::Map(pairs)) => {
                    match pairs.iter().find(|(key, _)| key.scalar() == Some(k)) {
                        // An unknown key is best shown at the key itself.
                        Some((key, value)) => {
                            place = (key.line, key.col);
                            Some(value)
                        }
                        None => None,
                    }
                }
                (PathStep::Index(i), Kind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => {
                    node = n;
                    // A scalar, or a list item, is shown at itself; a mapping or list reached
                    // by a key is shown at its key (kept from above).
                    let scalar = !matches!(n.kind, Kind::Map(_) | Kind::Seq(_));
                    if scalar || matches!(step, PathStep::Index(_)) {
                        place = (n.line, n.col);
                    }
                }
                None => break,
            }
        }
        place
    }
}

fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.kind {
        Kind::Null => J::Null,
        Kind::Scalar { text, quoted: true } => J::String(text.clone()),
        Kind::Scalar {
            text,
            quoted: false,
        } => match text.as_str() {
            "true" | "True" | "TRUE" => J::Bool(true),
            "false" | "False" | "FALSE" => J::Bool(false),
            _ => {
                if let Some(i) = node.int() {
                    J::from(i)
                } else if let Some(f) = text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && text.bytes().any(|b| b == b'.'))
                {
                    J::from(f)
                } else {
                    J::String(text.clone())
                }
            }
        },
        Kind::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Kind::Map(pairs) => J::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.scalar().unwrap_or_default().to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_scalars_and_finds_places() {
        let text = "tests:\n  - name: one\n    n: 3\n    f: 2.5\n    q: \"3\"\n    b: true\n    z: ~\n    at: +1d\n";
        let doc = Document::parse(Path::new("t.yaml"), text).unwrap();
        assert_eq!(
            doc.to_json(),
            serde_json::json!({"tests": [{"name": "one", "n": 3, "f": 2.5, "q": "3", "b": true, "z": null, "at": "+1d"}]})
        );
        let at = [
            PathStep::Key("tests".into()),
            PathStep::Index(0),
            PathStep::Key("at".into()),
        ];
        assert_eq!(doc.position(&at), (8, 9));
        let missing = [
            PathStep::Key("tests".into()),
            PathStep::Index(0),
            PathStep::Key("nope".into()),
        ];
        assert_eq!(doc.position(&missing), (2, 5));
    }

    #[test]
    fn yaml_errors_are_diagnostics() {
        let err = Document::parse(Path::new("t.yaml"), "a: [1, 2\n").unwrap_err();
        assert_eq!(err[0].file, Path::new("t.yaml"));
        assert!(err[0].line >= 1);
    }
}
