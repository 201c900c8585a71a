//! What every kib library error shares: [`Hint`], the one way an error says what the user can
//! do about it, and [`error_chain`], the one formatter for an error and its sources on a line.
//!
//! It lives in this leaf crate because every library crate (and the `kib` binary) already
//! depends on it.

/// A library error that may know the usual fix for its cause.
///
/// `kib`'s renderer prints the hint under the error chain (`hint: …`), once. Library errors
/// implement it; an error that wraps another kib error returns its own hint where it has a
/// better one, else the wrapped error's: the hint describes the error as a whole, so the
/// renderer asks only the outermost kib error in a chain and never prints a hint twice. A
/// wrapper that has a hint of its own and wraps one with useful detail returns both, one per
/// line; the renderer prints each line as its own `hint: …`.
pub trait Hint: std::error::Error {
    /// A suggestion for the user, when the cause has a usual fix.
    fn hint(&self) -> Option<String>;
}

impl<E: Hint> Hint for Box<E> {
    fn hint(&self) -> Option<String> {
        (**self).hint()
    }
}

/// An error and its sources on one line, `: `-separated (what anyhow's `{:#}` prints): the one
/// formatter the libraries use where a cause goes into a message or a report.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_joins_every_source() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
