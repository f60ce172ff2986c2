//! Errors that point into the profile: file, line, column, key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a profile, placed at the offending key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The key path at fault (`layer[1].rock`), empty when the problem is the document itself.
    pub key: String,
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: &str,
        message: String,
    ) -> Diagnostic {
        let offset = span.map(|s| s.start).unwrap_or(0).min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read profile {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

impl Error {
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            Error::Invalid(d) => Some(d),
            Error::Read { .. } => None,
        }
    }
}

impl From<Diagnostic> for Error {
    fn from(d: Diagnostic) -> Error {
        Error::Invalid(Box::new(d))
    }
}
