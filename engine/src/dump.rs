//! Dump files: text files of ids (128 hex chars, upper or lower case), one or more per line
//! separated by spaces or tabs; blank lines and CRLF line ends allowed. Elliptics' dump
//! files are valid input.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use crate::id::{Id, ParseIdError};

/// Why a dump file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The dump file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A word on a line is not an id.
    #[error("{path}:{line}: word {word} {text:?} is not an id: {reason}")]
    Malformed {
        /// The dump file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based word number on the line.
        word: usize,
        /// The word (cut to 40 chars).
        text: String,
        /// Why.
        #[source]
        reason: ParseIdError,
    },
}

/// Parses dump text; `origin` names it in errors. Ids are returned in file order,
/// duplicates included.
pub fn parse(origin: &Path, text: impl BufRead) -> Result<Vec<Id>, DumpError> {
    let mut ids = Vec::new();
    for (n, line) in text.split(b'\n').enumerate() {
        let line = line.map_err(|source| DumpError::Io {
            path: origin.to_path_buf(),
            source,
        })?;
        let line = String::from_utf8_lossy(&line);
        for (w, word) in line
            .split([' ', '\t', '\r'])
            .filter(|w| !w.is_empty())
            .enumerate()
        {
            let id = word.parse::<Id>().map_err(|reason| DumpError::Malformed {
                path: origin.to_path_buf(),
                line: n + 1,
                word: w + 1,
                text: word.chars().take(40).collect(),
                reason,
            })?;
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Reads and parses a dump file.
pub fn read(path: &Path) -> Result<Vec<Id>, DumpError> {
    let file = std::fs::File::open(path).map_err(|source| DumpError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, std::io::BufReader::new(file))
}

/// Writes ids one per line (lowercase hex), atomically.
pub fn write(path: &Path, ids: impl IntoIterator<Item = Id>) -> Result<(), DumpError> {
    let io = |source| DumpError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        for id in ids {
            writeln!(w, "{id}").map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_ids_per_line_crlf_blank_lines_and_upper_case() {
        let a = Id::from_key(b"a");
        let b = Id::from_key(b"b");
        let text = format!("{a}  {}\t{a}\r\n\r\n\n{b}\n", b.to_hex().to_uppercase());
        let ids = parse(Path::new("d"), text.as_bytes()).unwrap();
        assert_eq!(ids, vec![a, b, a, b]);
    }

    #[test]
    fn a_malformed_word_names_file_line_and_word() {
        let a = Id::from_key(b"a");
        let text = format!("{a}\n{a} 1234\n");
        let err = parse(Path::new("ids.dump"), text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ids.dump:2: word 2 \"1234\""), "{err}");
    }
}
