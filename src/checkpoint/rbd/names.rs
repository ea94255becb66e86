//! The names export-rbd gives in the cluster: images (`PREFIX-diskN`,
//! clones `PREFIX-diskN--BRANCH`) and snapshots (one per checkpoint).
//!
//! A snapshot is named after its checkpoint. RBD refuses `@` and `/` in
//! names and the names also travel on command lines, so a checkpoint name
//! is kept as it is when it holds only ASCII letters, digits, `.`, `_`,
//! `-` and `+` and does not start with `-` or `.`; otherwise every other
//! character becomes `_` and `~` plus the first 8 characters of the
//! checkpoint's id is appended, so that two names never map to one. The
//! mapping depends only on the name and the id: a renamed checkpoint gets
//! a new snapshot on the next export.

/// Whether `c` may stand in an RBD name as it is.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

/// The snapshot name of checkpoint `name` with id `id`.
pub fn snap_name(name: &str, id: &str) -> String {
    let kept = !name.is_empty()
        && name.len() <= 200
        && name.chars().all(plain)
        && !name.starts_with(['-', '.']);
    if kept {
        return name.to_string();
    }
    let mut s: String = name
        .chars()
        .take(200)
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    if s.starts_with(['-', '.']) {
        s.insert(0, '_');
    }
    let short: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    format!("{s}~{short}")
}

/// Whether `s` is acceptable as an image name prefix (a pool-relative
/// image name without `@` or `/`).
pub fn valid_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.chars().all(plain) && !s.starts_with(['-', '.'])
}

/// The default prefix from the VM's name: its name mapped like a snapshot
/// name, without the id suffix (`vm` when nothing is left).
pub fn default_prefix(vm_name: &str) -> String {
    let s: String = vm_name
        .chars()
        .take(100)
        .map(|c| if plain(c) { c } else { '_' })
        .collect();
    let s = s.trim_start_matches(['-', '.']).to_string();
    if s.is_empty() {
        "vm".into()
    } else {
        s
    }
}

/// The image of disk `k` on the main path.
pub fn image_name(prefix: &str, k: usize) -> String {
    format!("{prefix}-disk{k}")
}

/// The clone of disk `k` holding the branch that starts at the checkpoint
/// whose snapshot name is `first_snap`.
pub fn clone_name(prefix: &str, k: usize, first_snap: &str) -> String {
    format!("{prefix}-disk{k}--{}", first_snap.replace('~', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept_others_get_the_id() {
        assert_eq!(snap_name("before-upgrade_2.1", "abc"), "before-upgrade_2.1");
        assert_eq!(snap_name("a b", "0123456789ab"), "a_b~01234567");
        assert_eq!(snap_name("a_b", "0123456789ab"), "a_b");
        assert_eq!(snap_name("x@y/z", "ff-ee"), "x_y_z~ffee");
        assert_eq!(snap_name("-x", "1"), "_-x~1");
        assert_eq!(snap_name("été", "12"), "_t_~12");
        assert_eq!(default_prefix("my vm"), "my_vm");
        assert_eq!(default_prefix("..."), "vm");
        assert!(valid_prefix("web-1") && !valid_prefix("a/b") && !valid_prefix(""));
    }
}
