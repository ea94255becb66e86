//! The one error type of the library, with structured context.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which on-disk structure (or relation between structures) a
/// [`Corruption`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Structure {
    /// One of the two VHDX headers.
    Header,
    /// One of the two region tables.
    RegionTable,
    /// The metadata table (its header and entries).
    MetadataTable,
    /// One metadata item, by name ("file parameters", "virtual disk size", …).
    MetadataItem(&'static str),
    /// The Block Allocation Table.
    Bat,
    /// A sector bitmap block.
    SectorBitmap,
    /// The log as a whole (its region, its active sequence).
    Log,
    /// One log entry.
    LogEntry,
    /// The parent locator metadata item.
    ParentLocator,
    /// The file type identifier at offset 0.
    FileIdentifier,
    /// How the objects lie in the file (overlaps, bounds, file length).
    Layout,
    /// The chain of a differencing disk and its parents.
    Chain,
    /// A VM's checkpoint tree.
    CheckpointTree,
    /// A VM folder's own JSON file.
    VmFile,
    /// The footer of a VHD (or its copy at offset 0).
    VhdFooter,
    /// The dynamic disk header of a VHD.
    VhdHeader,
    /// An RBD stream ("rbd diff v1"), read from `rbd export-diff`.
    RbdStream,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::Header => "header",
            Structure::RegionTable => "region table",
            Structure::MetadataTable => "metadata table",
            Structure::MetadataItem(name) => name,
            Structure::Bat => "BAT",
            Structure::SectorBitmap => "sector bitmap",
            Structure::Log => "log",
            Structure::LogEntry => "log entry",
            Structure::ParentLocator => "parent locator",
            Structure::FileIdentifier => "file identifier",
            Structure::Layout => "file layout",
            Structure::Chain => "disk chain",
            Structure::CheckpointTree => "checkpoint tree",
            Structure::VmFile => "VM file",
            Structure::VhdFooter => "VHD footer",
            Structure::VhdHeader => "VHD dynamic disk header",
            Structure::RbdStream => "RBD diff stream",
        })
    }
}

/// What is wrong with a structure, in data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The structure does not start with its signature.
    BadSignature {
        /// The value found where the signature should be.
        found: u64,
    },
    /// A checksum does not match.
    BadChecksum {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// A field holds a value that is not allowed.
    BadField {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is not allowed.
        problem: &'static str,
    },
    /// The bytes end before the structure does.
    Truncated {
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes there are.
        found: u64,
    },
    /// A value differs from the one it must equal.
    Mismatch {
        /// What is compared.
        what: &'static str,
        /// The value it must have.
        expected: u64,
        /// The value found.
        found: u64,
    },
    /// A required part is absent.
    Missing(&'static str),
    /// Two objects of the file share bytes.
    Overlap {
        /// The first object.
        what: String,
        /// The object it overlaps.
        with: String,
    },
    /// Anything else, described in words.
    Invalid(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::BadSignature { found } => write!(f, "bad signature {found:#x}"),
            Reason::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            Reason::BadField {
                field,
                value,
                problem,
            } => write!(f, "invalid {field} {value:#x}: {problem}"),
            Reason::Truncated { needed, found } => {
                write!(f, "truncated: {found} bytes where {needed} are needed")
            }
            Reason::Mismatch {
                what,
                expected,
                found,
            } => write!(f, "{what} is {found}, expected {expected}"),
            Reason::Missing(what) => write!(f, "{what} is missing"),
            Reason::Overlap { what, with } => write!(f, "{what} overlaps {with}"),
            Reason::Invalid(text) => f.write_str(text),
        }
    }
}

/// A damaged structure: which one, where, and what is wrong, in data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The structure that is damaged.
    pub structure: Structure,
    /// Its file offset, when known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub reason: Reason,
}

impl Corruption {
    /// A corruption of `structure` at `offset` (when known).
    pub fn new(structure: Structure, offset: Option<u64>, reason: Reason) -> Self {
        Corruption {
            structure,
            offset,
            reason,
        }
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{} at offset {o:#x}: {}", self.structure, self.reason)?,
            None => write!(f, "{}: {}", self.structure, self.reason)?,
        }
        if let (Structure::FileIdentifier, Reason::BadSignature { .. }) =
            (self.structure, &self.reason)
        {
            f.write_str(" (not a VHDX file)")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in libckpt.
///
/// Errors name the structure, the offset and the values involved, so that a
/// message tells the user what is wrong with which file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An error about a particular file (wraps the underlying error).
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file the error is about.
        path: PathBuf,
        /// What went wrong with it.
        #[source]
        source: Box<Error>,
    },

    /// A structure of the file is damaged: which one, where, and what is
    /// wrong are in the [`Corruption`].
    #[error("corrupt image: {0}")]
    Corrupt(Corruption),

    /// A VM folder's own file (`vm.json`, `journal.json`) is damaged or
    /// inconsistent (edited by hand, truncated): the message names the
    /// file, says what is wrong and what to do.
    #[error("damaged VM file: {0}")]
    BadVmFile(String),

    /// The file uses a feature libckpt does not support (for example an
    /// unknown required region or metadata item).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A caller passed a bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A read or write reaches past the end of the virtual disk.
    #[error("range {offset}+{len} is outside the virtual disk of {size} bytes")]
    OutOfRange {
        /// Start of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },

    /// A write was attempted on a disk opened read-only.
    #[error("the disk is open read-only")]
    ReadOnly,

    /// The operation was cancelled by a callback.
    #[error("operation cancelled")]
    Cancelled,

    /// Another process is changing the same object (a VM, a disk).
    #[error("busy: {0}")]
    Busy(String),

    /// A named thing (a checkpoint, a VM) does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// A named thing (a checkpoint name, a VM) exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// The volume lacks the space an operation needs; nothing was changed.
    #[error("not enough space: {0}")]
    NoSpace(String),

    /// The parent of a differencing disk could not be found.
    #[error("{}: parent disk not found (tried {})", child.display(), tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ParentNotFound {
        /// The differencing disk.
        child: PathBuf,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },

    /// A parent's DataWriteGuid does not match its child's linkage: the
    /// parent was modified, replaced or mounted since the child was made.
    #[error("{}: parent {} does not match: the child expects DataWriteGuid {expected}, the parent has {found} (it was modified, replaced or mounted since the child was created, or it is not the child's parent)", child.display(), parent.display())]
    ParentMismatch {
        /// The differencing disk.
        child: PathBuf,
        /// The parent found.
        parent: PathBuf,
        /// The linkage the child records.
        expected: uuid::Uuid,
        /// The parent's DataWriteGuid.
        found: uuid::Uuid,
    },

    /// A VHD parent's unique id or timestamp differs from what its child
    /// records: the parent was replaced or modified since the child was made.
    #[error("{}: parent {} does not match: {detail} (it was modified or replaced since the child was created, or it is not the child's parent)", child.display(), parent.display())]
    ParentStale {
        /// The differencing disk.
        child: PathBuf,
        /// The parent found.
        parent: PathBuf,
        /// What differs.
        detail: String,
    },

    /// An error the holder of a VM reported over its control channel
    /// ([`crate::checkpoint::control`]): its class and its message as the
    /// holder's error displayed it.
    #[error("{message}")]
    Remote {
        /// The class of the holder's error.
        kind: ErrorKind,
        /// The holder's error, displayed.
        message: String,
    },
}

/// Coarse classes of [`Error`], stable for mapping to C status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Operating-system I/O error.
    Io,
    /// A file or directory does not exist.
    NotFound,
    /// The file is damaged.
    Corrupt,
    /// The file uses a feature that is not supported.
    Unsupported,
    /// Bad argument.
    InvalidArgument,
    /// Request past the end of the disk.
    OutOfRange,
    /// Write to a read-only disk.
    ReadOnly,
    /// Cancelled by a callback.
    Cancelled,
    /// A differencing disk's parent does not match its linkage.
    ParentMismatch,
    /// Another process holds the object.
    Busy,
    /// The file to create exists already.
    AlreadyExists,
    /// The operating system denied access.
    PermissionDenied,
    /// Not enough free space.
    NoSpace,
}

impl Error {
    /// Attach the file this error is about (once; an error that already
    /// names a file is returned unchanged).
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            e @ (Error::InFile { .. }
            | Error::ParentNotFound { .. }
            | Error::ParentMismatch { .. }
            | Error::ParentStale { .. }) => e,
            e => Error::InFile {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io(e) if e.kind() == std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            Error::Io(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                ErrorKind::AlreadyExists
            }
            Error::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                ErrorKind::PermissionDenied
            }
            Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock => ErrorKind::Busy,
            Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            Error::Io(_) => ErrorKind::Io,
            Error::InFile { source, .. } => source.kind(),
            Error::Corrupt(_) | Error::BadVmFile(_) => ErrorKind::Corrupt,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::OutOfRange { .. } => ErrorKind::OutOfRange,
            Error::ReadOnly => ErrorKind::ReadOnly,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::ParentNotFound { .. } => ErrorKind::NotFound,
            Error::ParentMismatch { .. } | Error::ParentStale { .. } => ErrorKind::ParentMismatch,
            Error::Busy(_) => ErrorKind::Busy,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::NoSpace(_) => ErrorKind::NoSpace,
            Error::Remote { kind, .. } => *kind,
        }
    }

    /// An [`Error::Corrupt`] of `structure` at `offset` (when known).
    pub fn corrupt(structure: Structure, offset: Option<u64>, reason: Reason) -> Error {
        Error::Corrupt(Corruption::new(structure, offset, reason))
    }

    /// The corruption this error describes (looking through [`Error::InFile`]).
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corrupt(c) => Some(c),
            Error::InFile { source, .. } => source.corruption(),
            _ => None,
        }
    }

    /// Record `offset` as the damaged structure's file offset, when the
    /// error is a corruption whose offset is not known yet.
    pub(crate) fn at(mut self, offset: u64) -> Error {
        if let Error::Corrupt(c) = &mut self {
            c.offset.get_or_insert(offset);
        }
        self
    }
}

/// Shorthand for an [`Error::Corrupt`] with a [`Reason::BadField`].
pub(crate) fn bad_field(
    structure: Structure,
    field: &'static str,
    value: u64,
    problem: &'static str,
) -> Error {
    Error::corrupt(
        structure,
        None,
        Reason::BadField {
            field,
            value,
            problem,
        },
    )
}
