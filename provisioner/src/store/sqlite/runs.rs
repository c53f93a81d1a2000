//! SqliteStore: run reports.

use std::collections::HashMap;

use levee_proto::runs::{RunKind, RunReport};
use rusqlite::{params, OptionalExtension, Row};

use super::{corrupt, Cached, SqliteStore};
use crate::store::runs::{assemble_facts, db_int, run_record, RUNS_KEPT, RUN_COLUMNS};
use crate::store::{now, BackupFacts, Result, RunRecord, RunStore};

fn run_row(r: &Row) -> rusqlite::Result<RunRecord> {
    Ok(run_record!(r, get))
}

impl RunStore for SqliteStore {
    fn record_run(&self, appliance: i64, r: &RunReport) -> Result<bool> {
        let conn = self.lock();
        let sources = serde_json::to_string(&r.sources).map_err(corrupt)?;
        let errors = serde_json::to_string(&r.errors).map_err(corrupt)?;
        let id: Option<i64> = conn
            .query_row_cached(
                "INSERT INTO runs (appliance_id, received_at, report_id, kind, job, sources,
                   started_at, ended_at, result, files_new, files_total, bytes_new, bytes_total,
                   snapshot, errors, error_count, repo_bytes, lag_secs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                   ?18)
                 ON CONFLICT (appliance_id, report_id) DO NOTHING RETURNING id",
                params![
                    appliance,
                    now() as i64,
                    r.id,
                    r.kind.as_str(),
                    r.job,
                    sources,
                    r.started_at,
                    r.ended_at,
                    r.result.as_str(),
                    db_int(r.files_new),
                    db_int(r.files_total),
                    db_int(r.bytes_new),
                    db_int(r.bytes_total),
                    r.snapshot,
                    errors,
                    db_int(r.error_count),
                    r.repo_bytes.map(db_int),
                    r.lag_secs.map(db_int),
                ],
                |row| row.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(false) };
        // Cheap trim, as for events: now and then, everything older than
        // this appliance's newest RUNS_KEPT.
        if id % 50 == 0 {
            conn.execute_cached(
                "DELETE FROM runs WHERE appliance_id = ?1 AND id <= (
                   SELECT id FROM runs WHERE appliance_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![appliance, RUNS_KEPT],
            )?;
        }
        Ok(true)
    }

    fn runs(&self, appliance: i64, limit: usize) -> Result<Vec<RunRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE appliance_id = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![appliance, limit as i64], run_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn backup_facts(&self, only: Option<i64>) -> Result<HashMap<i64, BackupFacts>> {
        let conn = self.lock();
        // `?1 IS NULL OR appliance_id = ?1`: one statement for one or all.
        let ends = conn
            .prepare_cached(
                "SELECT appliance_id, MAX(CASE WHEN result <> 'failed' THEN ended_at END), MAX(ended_at)
                 FROM runs WHERE kind = 'backup' AND (?1 IS NULL OR appliance_id = ?1)
                 GROUP BY appliance_id",
            )?
            .query_map(params![only], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let starts = conn
            .prepare_cached(
                "SELECT appliance_id, job, MAX(started_at) FROM runs
                 WHERE kind = 'backup' AND job IS NOT NULL AND (?1 IS NULL OR appliance_id = ?1)
                 GROUP BY appliance_id, job",
            )?
            .query_map(params![only], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // A stream is one schedule's runs over the same sources; its streak
        // is the failed runs received after its last successful one.
        let streaks = conn
            .prepare_cached(
                "SELECT appliance_id, job, sources, COUNT(*) FROM runs r
                 WHERE kind = 'backup' AND result = 'failed' AND (?1 IS NULL OR appliance_id = ?1)
                   AND id > COALESCE((SELECT MAX(id) FROM runs s
                       WHERE s.appliance_id = r.appliance_id AND s.kind = 'backup'
                         AND s.result <> 'failed' AND s.job IS r.job AND s.sources = r.sources), 0)
                 GROUP BY appliance_id, job, sources",
            )?
            .query_map(params![only], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(assemble_facts(ends, starts, streaks))
    }

    fn latest_runs(&self, kind: RunKind) -> Result<HashMap<i64, RunRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS}, appliance_id FROM runs WHERE id IN (
               SELECT MAX(id) FROM runs WHERE kind = ?1 GROUP BY appliance_id)"
        ))?;
        let rows = stmt.query_map([kind.as_str()], |r| Ok((r.get(17)?, run_row(r)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
