//! CEL expressions, compiled once when a journey loads.

use std::fmt;
use std::sync::Arc;

/// A compiled CEL expression with the text it came from.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<cel::Program>,
    uses_event: bool,
}

impl Expr {
    /// Compiles an expression; the error is the CEL parser's message.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = cel::Program::compile(source).map_err(|e| {
            e.errors
                .iter()
                .map(|e| e.msg.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let uses_event = program.references().has_variable("event");
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
            uses_event,
        })
    }

    /// The text of the expression.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled program.
    pub fn program(&self) -> &cel::Program {
        &self.program
    }

    /// Whether the expression reads `event`.
    pub fn uses_event(&self) -> bool {
        self.uses_event
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_refuses() {
        let e = Expr::compile(r#"profile.ltv_segment in ["high", "medium"]"#).unwrap();
        assert!(!e.uses_event());
        assert!(Expr::compile("event.attributes.amount > 10").unwrap().uses_event());
        assert!(Expr::compile("profile.a ==").is_err());
    }
}
