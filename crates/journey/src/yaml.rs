//! A small YAML tree with positions, built from `saphyr_parser` events.
//!
//! Only what journey files need: one document of mappings, sequences and scalars. Scalars keep
//! their text (so messages can say "found `abc`"); plain `null`, `~` and empty scalars are
//! [`Kind::Null`]. Duplicate mapping keys are reported at the second key (which is dropped).
//! Aliases are expanded (within a size budget); tags are refused.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Deepest nesting accepted (journey files need about 6 levels).
const MAX_DEPTH: usize = 64;
/// Most nodes in one document, aliases expanded.
const MAX_NODES: usize = 200_000;

/// A YAML node and its place (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub col: usize,
    pub kind: Kind,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A scalar: its text, and whether it was quoted (or a block scalar).
    Scalar { text: String, quoted: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order, without duplicate keys.
    Map(Vec<(Node, Node)>),
    /// `null`, `~` or nothing.
    Null,
}

/// A problem in the YAML itself (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl Node {
    /// The text of a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The pairs of a mapping.
    pub fn map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// The items of a sequence.
    pub fn seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value of a key of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?
            .iter()
            .find(|(k, _)| k.scalar() == Some(key))
            .map(|(_, v)| v)
    }

    /// A whole number written as a plain scalar.
    pub fn int(&self) -> Option<i64> {
        match &self.kind {
            Kind::Scalar {
                text,
                quoted: false,
            } => {
                let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse().ok()
            }
            _ => None,
        }
    }

    /// How the node reads in a message: `` `abc` ``, `"abc"`, nothing, a list, a mapping.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar { text, quoted } => {
                let mut shown: String = text.chars().take(40).collect();
                if shown.len() < text.len() {
                    shown.push_str("...");
                }
                if *quoted {
                    format!("`{shown:?}`")
                } else {
                    format!("`{shown}`")
                }
            }
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
            Kind::Null => "nothing".into(),
        }
    }

    /// A canonical text of the content: mapping keys sorted, scalars by text, sequences in
    /// order. Comments, formatting, quoting style and key order do not change it.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut String) {
        match &self.kind {
            Kind::Null => out.push('~'),
            Kind::Scalar { text, .. } => {
                let _ = write!(out, "s{}:{text}", text.len());
            }
            Kind::Seq(items) => {
                let _ = write!(out, "[{}:", items.len());
                for item in items {
                    item.write_canonical(out);
                }
                out.push(']');
            }
            Kind::Map(pairs) => {
                let mut entries: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(k, v)| (k.canonical(), v.canonical()))
                    .collect();
                entries.sort();
                let _ = write!(out, "{{{}:", entries.len());
                for (k, v) in entries {
                    out.push_str(&k);
                    out.push_str(&v);
                }
                out.push('}');
            }
        }
    }
}

/// One collection being built.
enum Frame {
    Seq {
        start: Node,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Node,
        anchor: usize,
        pairs: Vec<(Node, Node)>,
        key: Option<Node>,
        /// The value that comes belongs to a duplicate key: drop it.
        skip: bool,
        seen: HashMap<String, usize>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    errors: Vec<YamlError>,
}

fn place(span: &Span) -> (usize, usize) {
    (span.start.line().max(1), span.start.col() + 1)
}

fn count(node: &Node) -> usize {
    match &node.kind {
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

impl Builder {
    fn error(&mut self, line: usize, col: usize, message: impl Into<String>) {
        self.errors.push(YamlError {
            line,
            col,
            message: message.into(),
        });
    }

    /// Adds a finished node to its parent (or makes it the document).
    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), ()> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(frame) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match frame {
            Frame::Seq { items, .. } => items.push(node),
            Frame::Map {
                pairs,
                key,
                skip,
                seen,
                ..
            } => match key.take() {
                None => {
                    let mut duplicate = None;
                    if let Some(text) = node.scalar().map(str::to_owned) {
                        if let Some(first) = seen.get(&text) {
                            duplicate = Some((text, *first));
                        } else {
                            seen.insert(text, node.line);
                        }
                    }
                    *skip = duplicate.is_some();
                    let (line, col) = (node.line, node.col);
                    *key = Some(node);
                    if let Some((text, first)) = duplicate {
                        self.error(
                            line,
                            col,
                            format!("duplicate key \"{text}\" (first given on line {first})"),
                        );
                    }
                }
                Some(k) => {
                    if !std::mem::take(skip) {
                        pairs.push((k, node));
                    }
                }
            },
        }
        Ok(())
    }

    fn refuse_tag(&mut self, line: usize, col: usize, tag: Option<&saphyr_parser::Tag>) {
        if let Some(tag) = tag {
            self.error(
                line,
                col,
                format!(
                    "YAML tags such as `{}{}` are not supported (remove the tag)",
                    match tag.handle.as_str() {
                        "tag:yaml.org,2002:" => "!!",
                        handle => handle,
                    },
                    tag.suffix
                ),
            );
        }
    }

    fn grow(&mut self, line: usize, col: usize, by: usize) -> Result<(), ()> {
        self.nodes += by;
        if self.nodes > MAX_NODES {
            self.error(
                line,
                col,
                format!(
                    "the document is too large (more than {MAX_NODES} values, aliases expanded)"
                ),
            );
            return Err(());
        }
        Ok(())
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), ()> {
        let (line, col) = place(&span);
        let is_seq = matches!(event, Event::SequenceStart(..));
        match event {
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    self.error(line, col, "this alias names no anchor defined before it");
                    return Err(());
                };
                self.grow(line, col, count(&node))?;
                self.finish(node, 0)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.grow(line, col, 1)?;
                self.refuse_tag(line, col, tag.as_deref());
                let plain = style == ScalarStyle::Plain;
                let kind = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar {
                        text: text.into_owned(),
                        quoted: !plain,
                    }
                };
                self.finish(Node { line, col, kind }, anchor)?;
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                self.grow(line, col, 1)?;
                self.refuse_tag(line, col, tag.as_deref());
                if self.stack.len() >= MAX_DEPTH {
                    self.error(
                        line,
                        col,
                        format!("the document nests too deep (more than {MAX_DEPTH} levels)"),
                    );
                    return Err(());
                }
                let start = Node {
                    line,
                    col,
                    kind: Kind::Null,
                };
                self.stack.push(if is_seq {
                    Frame::Seq {
                        start,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        start,
                        anchor,
                        pairs: Vec::new(),
                        key: None,
                        skip: false,
                        seen: HashMap::new(),
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Err(());
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        start,
                        anchor,
                        items,
                    } => (
                        Node {
                            kind: Kind::Seq(items),
                            ..start
                        },
                        anchor,
                    ),
                    Frame::Map {
                        start,
                        anchor,
                        pairs,
                        ..
                    } => (
                        Node {
                            kind: Kind::Map(pairs),
                            ..start
                        },
                        anchor,
                    ),
                };
                self.finish(node, anchor)?;
            }
        }
        Ok(())
    }
}

/// Parses one YAML document. Returns the document (`None` when the text holds none, or after a
/// fatal error) and the problems found; problems without a fatal error leave a usable tree.
pub(crate) fn parse(text: &str) -> (Option<Node>, Vec<YamlError>) {
    let mut b = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
        errors: Vec::new(),
    };
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        match item {
            Err(e) => {
                let m = e.marker();
                b.error(
                    m.line().max(1),
                    m.col() + 1,
                    format!("YAML syntax error: {}", e.info()),
                );
                return (None, b.errors);
            }
            Ok((event, span)) => {
                if let Event::DocumentStart(_) = event {
                    documents += 1;
                    if documents > 1 {
                        let (line, col) = place(&span);
                        b.error(
                            line,
                            col,
                            "a file holds one YAML document only (remove the second `---`)",
                        );
                        return (None, b.errors);
                    }
                }
                if b.event(event, span).is_err() {
                    return (None, b.errors);
                }
            }
        }
    }
    (b.root, b.errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(text: &str) -> Kind {
        Kind::Scalar {
            text: text.into(),
            quoted: false,
        }
    }

    #[test]
    fn builds_a_tree_with_positions() {
        let (root, errors) = parse("a: 1\nb:\n  - x\n  - 'y'\nc: {d: ~, e: }\n");
        assert!(errors.is_empty(), "{errors:?}");
        let root = root.unwrap();
        assert_eq!((root.line, root.col), (1, 1));
        let a = root.get("a").unwrap();
        assert_eq!((a.line, a.col, &a.kind), (1, 4, &scalar("1")));
        assert_eq!(a.int(), Some(1));
        let b = root.get("b").unwrap();
        assert_eq!((b.line, b.col), (3, 3));
        let items = b.seq().unwrap();
        assert_eq!((items[1].line, items[1].col), (4, 5));
        assert_eq!(
            items[1].kind,
            Kind::Scalar {
                text: "y".into(),
                quoted: true
            }
        );
        assert_eq!(items[1].int(), None);
        let c = root.get("c").unwrap();
        assert_eq!((c.line, c.col), (5, 4));
        assert_eq!(c.get("d").unwrap().kind, Kind::Null);
        assert_eq!(c.get("e").unwrap().kind, Kind::Null);
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second() {
        let (root, errors) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            errors,
            vec![YamlError {
                line: 3,
                col: 1,
                message: "duplicate key \"a\" (first given on line 1)".into()
            }]
        );
        let root = root.unwrap();
        assert_eq!(root.map().unwrap().len(), 2);
        assert_eq!(root.get("a").unwrap().int(), Some(1));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let (root, errors) = parse("a: 1\nb: [1, 2\nc: 3\n");
        assert!(root.is_none());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("YAML syntax error"));
        assert!(errors[0].line >= 2, "{errors:?}");
    }

    #[test]
    fn aliases_expand_and_tags_are_refused() {
        let (root, errors) = parse("a: &x [1, 2]\nb: *x\n");
        assert!(errors.is_empty());
        let root = root.unwrap();
        assert_eq!(root.get("b").unwrap().seq().unwrap().len(), 2);
        let (_, errors) = parse("a: !!str 3\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("tags"), "{errors:?}");
        let (root, errors) = parse("a: 1\n---\nb: 2\n");
        assert!(root.is_none());
        assert_eq!((errors[0].line, errors[0].col), (2, 1));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let (root, errors) = parse(&text);
        assert!(root.is_none());
        assert!(errors[0].message.contains("too large"));
        let (root, errors) = parse(&"[".repeat(10_000));
        assert!(root.is_none());
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn canonical_ignores_order_comments_and_quotes() {
        let one = parse("a: 1\nb: [x, 'y']\n").0.unwrap();
        let two = parse("# c\nb: [\"x\", y]   # d\na: 1\n").0.unwrap();
        let three = parse("b: [y, x]\na: 1\n").0.unwrap();
        assert_eq!(one.canonical(), two.canonical());
        assert_ne!(one.canonical(), three.canonical());
    }
}
