//! Control characters in values that end up in a file on the node: a NUL or ESC in an ssh key, a user name or
//! a path would reach authorized_keys, /etc/passwd or a file name. Checked before a field's own rules, so that
//! the message never repeats the character to a terminal.

use serde_spanned::Spanned;

use crate::diagnostic::Error;
use crate::model::Checker;

/// The first control character in a one-line value (tab is allowed), or None.
pub(crate) fn in_line(value: &str) -> Option<char> {
    value.chars().find(|&c| c.is_control() && c != '\t')
}

/// The first control character in a file's content (tab and newline are allowed), or None.
pub(crate) fn in_content(value: &str) -> Option<char> {
    value
        .chars()
        .find(|&c| c.is_control() && c != '\t' && c != '\n')
}

/// Why a one-line value with control character `c` is refused.
pub(crate) fn line_message(c: char) -> String {
    format!(
        "control character U+{:04X}: a one-line value holds no control characters but tab",
        u32::from(c)
    )
}

impl Checker<'_> {
    /// Refuses a one-line value holding a control character, positioned at the value.
    pub(crate) fn one_line(&self, value: &Spanned<String>, key: &str) -> Result<(), Error> {
        match in_line(value.get_ref()) {
            None => Ok(()),
            Some(c) => self.err(value.span(), key, line_message(c)),
        }
    }

    /// [`Checker::one_line`] for a file path; a NUL keeps the path check's own message.
    pub(crate) fn path_line(&self, path: &Spanned<String>, key: &str) -> Result<(), Error> {
        if path.get_ref().contains('\0') {
            return Ok(());
        }
        self.one_line(path, key)
    }

    /// Refuses a file content holding a control character other than tab and newline, positioned at the value.
    pub(crate) fn content_text(&self, value: &Spanned<String>, key: &str) -> Result<(), Error> {
        match in_content(value.get_ref()) {
            None => Ok(()),
            Some(c) => self.err(
                value.span(),
                key,
                format!(
                    "control character U+{:04X}: file content holds no control characters but tab and newline",
                    u32::from(c)
                ),
            ),
        }
    }
}
