//! Which RBD images an export-rbd makes of a VM's tree ([`plan_of`]).
//!
//! The tree's visible checkpoints (hidden branch points and checkpoints
//! being deleted are left out; their children hang under their nearest
//! visible ancestor) are cut into lines, one image per line and disk:
//!
//! - the main line: the path from the root to the checkpoint the current
//!   state hangs under, oldest first, with the current state as the
//!   image's head;
//! - a branch line for every other child of a checkpoint on a line: it
//!   starts at that child and follows the first child (in creation order)
//!   down to a leaf; its image is a clone of the branch point's snapshot,
//!   and its head is its last checkpoint. A line whose first checkpoint has
//!   no visible parent (a second root) is an image of its own, not a clone.

use std::path::PathBuf;

use super::names::snap_name;
use crate::checkpoint::model::{Checkpoint, VmFile};

/// One checkpoint of a line: a snapshot of the line's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The checkpoint's id.
    pub id: String,
    /// The checkpoint's name.
    pub name: String,
    /// The snapshot name ([`snap_name`]).
    pub snap: String,
    /// The checkpoint's disks, in the VM's disk order.
    pub disks: Vec<PathBuf>,
}

/// Where a branch line's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPoint {
    /// The line holding the branch point (an index into [`Plan::lines`]).
    pub line: usize,
    /// The branch point's step in that line.
    pub step: Step,
}

/// One image per disk: a line of checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// None for the main line; else the snapshot name of the line's first
    /// checkpoint (the clone's name ends with it).
    pub branch: Option<String>,
    /// The branch point (None: the main line, or a second root).
    pub parent: Option<BranchPoint>,
    /// The checkpoints, oldest first.
    pub steps: Vec<Step>,
    /// The head's disks when it is not the last step (the current state,
    /// on the main line).
    pub head: Option<Vec<PathBuf>>,
}

/// The lines of a VM's tree, the main line first, each line after the
/// line holding its branch point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The lines.
    pub lines: Vec<Line>,
}

fn step_of(c: &Checkpoint) -> Step {
    Step {
        id: c.id.clone(),
        name: c.name.clone(),
        snap: snap_name(&c.name, &c.id),
        disks: c.disks.clone(),
    }
}

/// The plan of the tree in `data` (see the module's documentation).
pub fn plan_of(data: &VmFile) -> Plan {
    let visible: Vec<&Checkpoint> = data
        .checkpoints
        .iter()
        .filter(|c| !c.hidden && !c.deleting)
        .collect();
    let parent_of = |c: &Checkpoint| {
        data.visible_ancestor(c.parent.as_deref())
            .map(|p| p.id.clone())
    };
    let children = |id: Option<&str>| -> Vec<&Checkpoint> {
        visible
            .iter()
            .copied()
            .filter(|c| parent_of(c).as_deref() == id)
            .collect()
    };
    // The main path, root first (bounded against a damaged tree).
    let mut main: Vec<&Checkpoint> = Vec::new();
    let mut at = data.current_checkpoint();
    while let Some(c) = at {
        if main.len() > data.checkpoints.len() {
            break;
        }
        main.push(c);
        at = data.visible_ancestor(c.parent.as_deref());
    }
    main.reverse();
    let mut lines = vec![Line {
        branch: None,
        parent: None,
        steps: main.iter().map(|c| step_of(c)).collect(),
        head: Some(data.current.disks.clone()),
    }];
    let mut placed: Vec<String> = main.iter().map(|c| c.id.clone()).collect();
    // A line from checkpoint `first` down its first children.
    let line_from = |first: &Checkpoint, parent: Option<BranchPoint>| -> Line {
        let mut steps = vec![step_of(first)];
        let mut id = first.id.clone();
        while let Some(c) = children(Some(&id)).first().copied() {
            if steps.len() > data.checkpoints.len() {
                break;
            }
            steps.push(step_of(c));
            id = c.id.clone();
        }
        Line {
            branch: Some(steps[0].snap.clone()),
            parent,
            steps,
            head: None,
        }
    };
    // Second roots (the main line's root, when there is one, is placed).
    for r in children(None) {
        if !placed.contains(&r.id) {
            let l = line_from(r, None);
            placed.extend(l.steps.iter().map(|s| s.id.clone()));
            lines.push(l);
        }
    }
    // Branches off every line, breadth first.
    let mut li = 0;
    while li < lines.len() {
        let steps = lines[li].steps.clone();
        for s in &steps {
            for c in children(Some(&s.id)) {
                if placed.contains(&c.id) {
                    continue;
                }
                let l = line_from(
                    c,
                    Some(BranchPoint {
                        line: li,
                        step: s.clone(),
                    }),
                );
                placed.extend(l.steps.iter().map(|s| s.id.clone()));
                lines.push(l);
            }
        }
        li += 1;
    }
    Plan { lines }
}
