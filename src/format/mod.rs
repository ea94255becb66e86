//! On-disk VHDX structures.
