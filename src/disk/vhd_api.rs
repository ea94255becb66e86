//! Creating VHD files through [`Disk`]: fixed and dynamic base disks,
//! differencing children of a VHD.

use std::path::Path;
use std::sync::Arc;

use super::chain;
use super::vhd::{Vhd, VhdCreate};
use super::{create_file, ChildOptions, Disk, DiskKind, Layer, OpenMode};
use crate::error::{Error, Result};
use crate::io::Storage;

/// Parameters of a new VHD base disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdOptions {
    /// Virtual size in bytes: a multiple of 512, at most 2040 GiB
    /// ([`crate::disk::vhd_max_size`]). The footer stores it as the current
    /// size, with Hyper-V's creator ("win "), so QEMU, Hyper-V and Azure
    /// all take exactly this size (whatever the CHS rounding).
    pub virtual_size: u64,
    /// A fixed disk (the data, then the footer) rather than a dynamic one.
    pub fixed: bool,
    /// Block size of a dynamic disk (a power of two, 4 KiB ..= 256 MiB).
    /// Default 2 MiB, as Hyper-V and QEMU.
    pub block_size: u32,
}

impl VhdOptions {
    /// A dynamic VHD of `virtual_size` bytes with 2 MiB blocks.
    pub fn new(virtual_size: u64) -> VhdOptions {
        VhdOptions {
            virtual_size,
            fixed: false,
            block_size: 2 << 20,
        }
    }
    /// Make it a fixed disk.
    pub fn fixed(mut self, fixed: bool) -> Self {
        self.fixed = fixed;
        self
    }
    /// Set the block size.
    pub fn block_size(mut self, v: u32) -> Self {
        self.block_size = v;
        self
    }

    fn create(&self) -> VhdCreate {
        VhdCreate {
            kind: if self.fixed {
                DiskKind::Fixed
            } else {
                DiskKind::Dynamic
            },
            size: self.virtual_size,
            block_size: self.block_size,
        }
    }
}

impl Disk {
    /// Create a new VHD at `path` (which must not exist) and open it read-write.
    pub fn create_vhd(path: impl AsRef<Path>, opts: &VhdOptions) -> Result<Disk> {
        let path = path.as_ref();
        let storage = create_file(path, |s| Vhd::create(s, &opts.create(), None))?;
        let file = Vhd::open(storage, false).map_err(|e| e.in_file(path))?;
        Ok(Disk::from_layers(vec![Layer {
            path: Some(path.to_path_buf()),
            file: file.into(),
        }]))
    }

    /// Create a new VHD on empty storage and open it read-write.
    pub fn create_vhd_on(storage: Arc<dyn Storage>, opts: &VhdOptions) -> Result<Disk> {
        if storage.len()? != 0 {
            return Err(Error::InvalidArgument(
                "storage for a new disk must be empty".into(),
            ));
        }
        Vhd::create(storage.as_ref(), &opts.create(), None)?;
        let file = Vhd::open(storage, false)?;
        Ok(Disk::from_layers(vec![Layer {
            path: None,
            file: file.into(),
        }]))
    }

    /// The VHD child of the chain `pdisk`, whose top is at `parent`.
    pub(super) fn create_vhd_child_of(
        path: &Path,
        parent: &Path,
        pdisk: &Disk,
        opts: &ChildOptions,
    ) -> Result<Disk> {
        let top = pdisk
            .top()
            .as_vhd()
            .ok_or_else(|| Error::InvalidArgument("the parent is not a VHD".into()))?;
        let spec = chain::vhd_parent_spec(path, parent, top)?;
        create_vhd_child_file(path, &spec, pdisk.virtual_size(), opts)?;
        Disk::open(path, OpenMode::ReadWrite)
    }

    /// A VHD child on empty `storage` of the VHD top of `parent` (in-memory
    /// chains; open it with [`Disk::open_storage_chain`]).
    pub(super) fn create_vhd_child_on(
        storage: Arc<dyn Storage>,
        parent: &Disk,
        opts: &ChildOptions,
    ) -> Result<()> {
        let top = parent
            .top()
            .as_vhd()
            .ok_or_else(|| Error::InvalidArgument("the parent is not a VHD".into()))?;
        let spec = super::vhd::VhdParent {
            unique_id: *top.unique_id().as_bytes(),
            timestamp: top.timestamp(),
            name: "parent.vhd".into(),
            absolute: String::new(),
            relative: ".\\parent.vhd".into(),
        };
        let copts = VhdCreate {
            kind: DiskKind::Differencing,
            size: parent.virtual_size(),
            block_size: opts.block_size,
        };
        Vhd::create(storage.as_ref(), &copts, Some(&spec))
    }
}

/// The largest virtual size of a VHD libckpt creates (2040 GiB).
pub fn vhd_max_size() -> u64 {
    super::vhd::MAX_VHD_SIZE
}

/// Create the differencing VHD `path` (which must not exist) of `size`
/// bytes with the parent `spec` (`chain::vhd_parent_spec`); its storage,
/// for the caller to open.
pub(super) fn create_vhd_child_file(
    path: &Path,
    spec: &super::vhd::VhdParent,
    size: u64,
    opts: &ChildOptions,
) -> Result<Arc<dyn Storage>> {
    let copts = VhdCreate {
        kind: DiskKind::Differencing,
        size,
        block_size: opts.block_size,
    };
    create_file(path, |s| Vhd::create(s, &copts, Some(spec)))
}
