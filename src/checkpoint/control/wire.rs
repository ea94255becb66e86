//! What both ends share: the socket's place, the line format (`Conn`), and
//! how errors travel (an [`ErrorKind`] name and the displayed text).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::{Error, ErrorKind, Result};

/// The control socket's name in the VM folder.
pub const SOCKET_FILE: &str = "ckpt-control.sock";

/// The protocol's version, in the greeting.
pub const PROTOCOL_VERSION: u64 = 1;

/// The longest line either side accepts (a request, a reply).
pub(super) const MAX_LINE: u64 = 16 << 20;

/// The control socket of the VM folder `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// The name of an [`ErrorKind`] in the protocol (its Rust name).
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "Io",
        ErrorKind::NotFound => "NotFound",
        ErrorKind::Corrupt => "Corrupt",
        ErrorKind::Unsupported => "Unsupported",
        ErrorKind::InvalidArgument => "InvalidArgument",
        ErrorKind::OutOfRange => "OutOfRange",
        ErrorKind::ReadOnly => "ReadOnly",
        ErrorKind::Cancelled => "Cancelled",
        ErrorKind::ParentMismatch => "ParentMismatch",
        ErrorKind::Busy => "Busy",
        ErrorKind::AlreadyExists => "AlreadyExists",
        ErrorKind::PermissionDenied => "PermissionDenied",
        ErrorKind::NoSpace => "NoSpace",
    }
}

/// The [`ErrorKind`] a protocol name stands for.
pub fn kind_of(name: &str) -> Option<ErrorKind> {
    const ALL: [ErrorKind; 13] = [
        ErrorKind::Io,
        ErrorKind::NotFound,
        ErrorKind::Corrupt,
        ErrorKind::Unsupported,
        ErrorKind::InvalidArgument,
        ErrorKind::OutOfRange,
        ErrorKind::ReadOnly,
        ErrorKind::Cancelled,
        ErrorKind::ParentMismatch,
        ErrorKind::Busy,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::NoSpace,
    ];
    ALL.into_iter().find(|k| kind_name(*k) == name)
}

/// The error a reply describes: the library's own variant when the text
/// is one it displays (so that it reads and matches the same), else
/// [`Error::Remote`] with the holder's text and kind.
pub fn error_of(kind: ErrorKind, message: &str) -> Error {
    let strip = |prefix: &str| message.strip_prefix(prefix).map(str::to_string);
    let plain = match kind {
        ErrorKind::Busy => strip("busy: ").map(Error::Busy),
        ErrorKind::NotFound => strip("not found: ").map(Error::NotFound),
        ErrorKind::AlreadyExists => strip("already exists: ").map(Error::AlreadyExists),
        ErrorKind::InvalidArgument => strip("invalid argument: ").map(Error::InvalidArgument),
        ErrorKind::Unsupported => strip("unsupported: ").map(Error::Unsupported),
        ErrorKind::NoSpace => strip("not enough space: ").map(Error::NoSpace),
        ErrorKind::Corrupt => strip("damaged VM file: ").map(Error::BadVmFile),
        ErrorKind::Cancelled if message == Error::Cancelled.to_string() => Some(Error::Cancelled),
        ErrorKind::ReadOnly if message == Error::ReadOnly.to_string() => Some(Error::ReadOnly),
        _ => None,
    };
    plain.unwrap_or_else(|| Error::Remote {
        kind,
        message: message.to_string(),
    })
}

/// One error reply line.
pub(super) fn error_reply(e: &Error) -> Value {
    json!({"ok": false, "kind": kind_name(e.kind()), "message": e.to_string()})
}

pub(super) fn poisoned() -> Error {
    Error::Busy(
        "the VM's holder failed during an earlier operation (a panic); close and reopen the VM"
            .into(),
    )
}

/// One side of a connection: lines in, lines out.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) reader: BufReader<UnixStream>,
    pub(super) writer: UnixStream,
}

impl Conn {
    pub(super) fn new(stream: UnixStream) -> Result<Conn> {
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub(super) fn send(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        self.writer.flush()
    }

    /// The next line as JSON; `Ok(None)` at the end of the stream.
    pub(super) fn recv(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(Error::from)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE {
            return Err(Error::InvalidArgument(format!(
                "control channel: a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("control channel: not JSON ({e})")))
    }
}

/// The error an error reply describes.
pub(super) fn reply_error(v: &Value) -> Error {
    let message = v["message"]
        .as_str()
        .unwrap_or("the holder refused the request");
    let kind = v["kind"]
        .as_str()
        .and_then(kind_of)
        .unwrap_or(ErrorKind::Io);
    error_of(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [
            ErrorKind::Io,
            ErrorKind::Busy,
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::NoSpace,
        ] {
            assert_eq!(kind_of(kind_name(k)), Some(k));
        }
        assert_eq!(kind_of("Nope"), None);
    }

    #[test]
    fn errors_read_the_same() {
        for e in [
            Error::Busy("x is held".into()),
            Error::NotFound("no checkpoint is called \"a\"".into()),
            Error::InvalidArgument("bad".into()),
            Error::AlreadyExists("taken".into()),
            Error::Cancelled,
            Error::Io(std::io::Error::other("disk gone")).in_file("/tmp/a.vhdx"),
        ] {
            let back = error_of(e.kind(), &e.to_string());
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.kind(), e.kind());
        }
        assert!(matches!(
            error_of(ErrorKind::Busy, "busy: held"),
            Error::Busy(m) if m == "held"
        ));
    }
}
