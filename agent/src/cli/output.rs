//! What each command prints: human text, or one JSON document (`--json`).

use anyhow::Result;
use levee_agent::backup::commands::backup::BackupSummary;
use levee_agent::backup::commands::check::CheckReport;
use levee_agent::backup::commands::diff::Change;
use levee_agent::backup::commands::forget::ForgetResult;
use levee_agent::backup::commands::ls::LsEntry;
use levee_agent::backup::commands::prune::PruneReport;
use levee_agent::backup::commands::restore::RestoreSummary;
use levee_agent::util::{format_time, human_bytes};
use levee_agent::Repository;
use levee_proto::repo::{KeySlot, NodeKind, Snapshot};
use serde::Serialize;
use serde_json::json;

/// A name or message as it may be shown on a terminal: control characters
/// (an escape sequence in a file name could rewrite the screen or the
/// shell's title) and bidirectional overrides (which make a name read
/// differently from its bytes) are escaped as `\u{..}`; `\n`, `\t` as such.
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(bad) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if bad(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

pub struct Out {
    pub json: bool,
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

impl Out {
    pub fn init(&self, repo: &Repository) -> Result<()> {
        if self.json {
            return print_json(&json!({"repository": repo.path, "id": repo.config.id}));
        }
        println!(
            "created repository {} at {}",
            repo.config.id,
            repo.path.display()
        );
        Ok(())
    }

    pub fn backup(&self, s: &BackupSummary) -> Result<()> {
        if self.json {
            return print_json(s);
        }
        let m = &s.summary;
        for e in &s.error_messages {
            eprintln!("warning: {}", esc(e));
        }
        println!(
            "Files:      {} ({} unchanged, {} read)",
            m.files,
            m.files_unchanged,
            m.files - m.files_unchanged
        );
        println!("Dirs:       {}", m.dirs);
        println!(
            "Bytes:      {} total, {} read, {} new, {} stored",
            human_bytes(m.bytes_total),
            human_bytes(m.bytes_read),
            human_bytes(m.bytes_new),
            human_bytes(s.bytes_stored)
        );
        println!("Dedup:      {:.2}x (total / stored)", s.dedup_ratio);
        println!("Errors:     {}", m.errors);
        println!("Duration:   {:.2} s", m.duration_ms as f64 / 1000.0);
        println!("snapshot {} saved", s.snapshot);
        Ok(())
    }

    pub fn snapshots(&self, snaps: &[(String, Snapshot)], bad: &[(String, String)]) -> Result<()> {
        if self.json {
            let v: Vec<_> = snaps
                .iter()
                .map(|(id, s)| json!({"id": id, "snapshot": s}))
                .collect();
            return print_json(&json!({"snapshots": v, "unreadable": bad, "damaged": bad}));
        }
        println!(
            "{:<10} {:<20} {:<16} {:<12} paths",
            "id", "time (UTC)", "host", "tags"
        );
        for (id, s) in snaps {
            println!(
                "{:<10} {:<20} {:<16} {:<12} {}",
                &id[..8.min(id.len())],
                format_time(s.time_ns),
                esc(&s.hostname),
                esc(&s.tags.join(",")),
                esc(&s.paths.join(" "))
            );
        }
        for (id, e) in bad {
            eprintln!(
                "damaged snapshot {id}: {} (`levee-agent forget {}` removes it)",
                esc(e),
                &id[..12.min(id.len())]
            );
        }
        println!("{} snapshots", snaps.len());
        Ok(())
    }

    pub fn ls(&self, entries: &[LsEntry]) -> Result<()> {
        if self.json {
            return print_json(entries);
        }
        for e in entries {
            let k = match e.node.kind {
                NodeKind::Dir => 'd',
                NodeKind::File => '-',
                NodeKind::Symlink => 'l',
            };
            println!(
                "{k} {:>12} {} {}",
                e.node.size,
                format_time(e.node.mtime_ns),
                esc(&e.path)
            );
        }
        Ok(())
    }

    pub fn restore(&self, s: &RestoreSummary) -> Result<()> {
        if self.json {
            return print_json(s);
        }
        for e in &s.warning_messages {
            eprintln!("warning: {}", esc(e));
        }
        for e in &s.error_messages {
            eprintln!("error: {}", esc(e));
        }
        let mut acls = match s.security_descriptors {
            0 => String::new(),
            n => format!(", {n} ACLs"),
        };
        if s.xattrs != 0 {
            acls.push_str(&format!(", {} xattrs", s.xattrs));
        }
        println!(
            "restored {} files, {} dirs, {}{acls} ({} skipped, {} warnings, {} errors) in {:.2} s",
            s.files,
            s.dirs,
            human_bytes(s.bytes),
            s.skipped,
            s.warnings,
            s.errors,
            s.duration_ms as f64 / 1000.0
        );
        Ok(())
    }

    pub fn diff(&self, changes: &[Change]) -> Result<()> {
        if self.json {
            return print_json(changes);
        }
        for c in changes {
            println!("{:<2} {}", c.change, esc(&c.path));
        }
        Ok(())
    }

    pub fn forget(&self, r: &ForgetResult, dry_run: bool) -> Result<()> {
        if self.json {
            return print_json(&json!({"keep": r.keep, "remove": r.remove, "dry_run": dry_run}));
        }
        for id in &r.remove {
            println!("{} {id}", if dry_run { "would remove" } else { "removed" });
        }
        println!(
            "{} kept, {} {}",
            r.keep.len(),
            r.remove.len(),
            if dry_run { "to remove" } else { "removed" }
        );
        Ok(())
    }

    pub fn repair(&self, r: &levee_agent::backup::commands::repair::RepairReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        for p in &r.packs_unreadable {
            println!("unreadable pack left in place: {}", esc(p));
        }
        for b in &r.blobs_damaged {
            println!("damaged, left out of the index: {}", esc(b));
        }
        for d in &r.dropped {
            println!("{}", esc(d));
        }
        for (old, new) in &r.snapshots_rewritten {
            println!("snapshot {old} rewritten as {new}");
        }
        println!(
            "index rebuilt from {} packs ({} blobs), {} old index files replaced; {} snapshots rewritten",
            r.packs_indexed,
            r.blobs_indexed,
            r.index_files_replaced,
            r.snapshots_rewritten.len()
        );
        Ok(())
    }

    pub fn unlock(&self, r: &levee_agent::backup::lock::UnlockReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        for l in &r.removed {
            println!("removed stale lock {}", esc(l));
        }
        for l in &r.removed_invalid {
            println!("removed invalid lock file {}", esc(l));
        }
        for l in &r.alive {
            println!("kept live lock {}", esc(l));
        }
        println!(
            "{} removed, {} live",
            r.removed.len() + r.removed_invalid.len(),
            r.alive.len()
        );
        Ok(())
    }

    pub fn prune(&self, r: &PruneReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        println!(
            "deleted {} packs ({}), marked {}, repacked {}, re-indexed {}, {} pending ({} waiting for running backups)",
            r.packs_deleted,
            human_bytes(r.bytes_freed),
            r.packs_marked,
            r.packs_repacked,
            r.packs_reindexed,
            r.packs_pending,
            r.waiting_for_backups
        );
        if let Some(rw) = &r.rewrite {
            println!(
                "rewrite: {} snapshots rewritten, {} blobs ({}) re-encrypted, {} already current; {} retired key(s) left{}",
                rw.snapshots_rewritten.len(),
                rw.blobs_rewritten,
                human_bytes(rw.bytes_rewritten),
                rw.blobs_current,
                rw.retired_keys_left,
                if rw.retired_keys_left > 0 {
                    " (run prune --rewrite again once the old packs are deleted)"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    pub fn check(&self, r: &CheckReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        println!(
            "{} snapshots, {} index files, {} packs ({} read, {} blobs verified)",
            r.snapshots, r.index_files, r.packs, r.packs_read, r.blobs_verified
        );
        if !r.unindexed_packs.is_empty() {
            println!("{} packs not in the index (an interrupted backup's; the next backup re-indexes them)", r.unindexed_packs.len());
        }
        for n in &r.notes {
            println!("note: {}", esc(n));
        }
        for e in &r.errors {
            println!("error: {}", esc(e));
        }
        println!(
            "{}",
            if r.errors.is_empty() {
                "no errors found".to_string()
            } else {
                format!("{} errors found", r.errors.len())
            }
        );
        Ok(())
    }

    pub fn keys(&self, slots: &[(String, KeySlot)]) -> Result<()> {
        if self.json {
            let v: Vec<_> = slots.iter().map(|(id, s)| json!({"id": id, "kind": s.kind, "label": s.label, "created": s.created, "kdf": s.kdf.algorithm, "kdf_memory_kib": s.kdf.memory_kib, "authenticated": s.authenticated()})).collect();
            return print_json(&v);
        }
        for (id, s) in slots {
            println!(
                "{}  {:<10} {:<20} created {}{}",
                &id[..8.min(id.len())],
                esc(&s.kind),
                esc(&s.label),
                format_time(s.created * 1_000_000_000),
                if s.authenticated() {
                    ""
                } else {
                    "  (version 1: kind and label not authenticated)"
                }
            );
        }
        Ok(())
    }

    /// `key remove`: says plainly what removing a slot does not do.
    pub fn key_removed(&self, id: &str) -> Result<()> {
        const NOT_REVOKED: &str = "the secret is not revoked: the master key is unchanged, so \
            any copy of this slot (disk image, offsite copy of keys/) still opens the repository, \
            including backups made from now on; after a leaked secret, run `levee-agent key \
            rotate` and then `levee-agent prune --rewrite`";
        if self.json {
            return print_json(
                &json!({"result": "removed key slot", "id": id, "revoked": false, "note": NOT_REVOKED}),
            );
        }
        println!("removed key slot {id}");
        eprintln!("note: {NOT_REVOKED}");
        Ok(())
    }

    /// `key rotate`: what changed, and what did not.
    pub fn rotated(&self, r: &levee_agent::backup::commands::rotate::RotateReport) -> Result<()> {
        const NOTE: &str = "new backups use the new key; data written before stays under the \
            old key until `levee-agent prune --rewrite` re-encrypts it (run it until it reports \
            0 retired keys). Offsite copies keep old packs and key slots until their retention \
            removes them: whoever holds the old secret and such a copy can read the data made \
            before the rotation, never what is written after it";
        if self.json {
            let mut v = serde_json::to_value(r)?;
            v["note"] = json!(NOTE);
            return print_json(&v);
        }
        for (old, new) in &r.snapshots {
            println!("snapshot {old} re-encrypted as {new}");
        }
        for s in &r.removed_slots {
            println!("removed key slot {s} (it wraps the old key; add other secrets again with `key add`)");
        }
        println!(
            "rotated: new key slot {}, {} index files and {} snapshots re-encrypted, {} retired key(s) waiting for prune --rewrite",
            r.new_slot,
            r.index_files,
            r.snapshots.len(),
            r.retired_keys
        );
        eprintln!("note: {NOTE}");
        Ok(())
    }

    pub fn message(&self, what: &str, id: &str) -> Result<()> {
        if self.json {
            return print_json(&json!({"result": what, "id": id}));
        }
        println!("{what} {id}");
        Ok(())
    }
}
