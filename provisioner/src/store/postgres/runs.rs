//! PgStore: run reports.

use std::collections::HashMap;

use levee_proto::runs::{RunKind, RunReport};
use tokio_postgres::Row;

use super::{corrupt, execute, query, query_opt, relaxed_tx, PgStore};
use crate::store::runs::{assemble_facts, db_int, run_record, RUNS_KEPT, RUN_COLUMNS};
use crate::store::{now, BackupFacts, Result, RunRecord, RunStore};

fn run_row(r: &Row) -> Result<RunRecord> {
    Ok(run_record!(r, try_get))
}

impl RunStore for PgStore {
    fn record_run(&self, appliance: i64, r: &RunReport) -> Result<bool> {
        let sources = serde_json::to_string(&r.sources).map_err(corrupt)?;
        let errors = serde_json::to_string(&r.errors).map_err(corrupt)?;
        self.block(async {
            let mut c = self.conn().await?;
            let tx = relaxed_tx(&mut c).await?;
            let row = query_opt(
                &tx,
                "INSERT INTO runs (appliance_id, received_at, report_id, kind, job, sources,
                   started_at, ended_at, result, files_new, files_total, bytes_new, bytes_total,
                   snapshot, errors, error_count, repo_bytes, lag_secs)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18)
                 ON CONFLICT (appliance_id, report_id) DO NOTHING RETURNING id",
                &[
                    &appliance,
                    &(now() as i64),
                    &r.id,
                    &r.kind.as_str(),
                    &r.job,
                    &sources,
                    &r.started_at,
                    &r.ended_at,
                    &r.result.as_str(),
                    &db_int(r.files_new),
                    &db_int(r.files_total),
                    &db_int(r.bytes_new),
                    &db_int(r.bytes_total),
                    &r.snapshot,
                    &errors,
                    &db_int(r.error_count),
                    &r.repo_bytes.map(db_int),
                    &r.lag_secs.map(db_int),
                ],
            )
            .await?;
            let Some(row) = row else { return Ok(false) };
            let id: i64 = row.try_get(0)?;
            // Cheap trim, as in the SQLite store.
            if id % 50 == 0 {
                execute(
                    &tx,
                    "DELETE FROM runs WHERE appliance_id = $1 AND id <= (
                       SELECT id FROM runs WHERE appliance_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    &[&appliance, &RUNS_KEPT],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn runs(&self, appliance: i64, limit: usize) -> Result<Vec<RunRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE appliance_id = $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&appliance, &(limit as i64)],
            )
            .await?
            .iter()
            .map(run_row)
            .collect()
        })
    }

    fn backup_facts(&self, only: Option<i64>) -> Result<HashMap<i64, BackupFacts>> {
        self.block(async {
            let c = self.conn().await?;
            let ends = query(
                &c,
                "SELECT appliance_id, MAX(CASE WHEN result <> 'failed' THEN ended_at END), MAX(ended_at)
                 FROM runs WHERE kind = 'backup' AND ($1::BIGINT IS NULL OR appliance_id = $1)
                 GROUP BY appliance_id",
                &[&only],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>>>()?;
            let starts = query(
                &c,
                "SELECT appliance_id, job, MAX(started_at) FROM runs
                 WHERE kind = 'backup' AND job IS NOT NULL AND ($1::BIGINT IS NULL OR appliance_id = $1)
                 GROUP BY appliance_id, job",
                &[&only],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>>>()?;
            let streaks = query(
                &c,
                "SELECT appliance_id, job, sources, COUNT(*) FROM runs r
                 WHERE kind = 'backup' AND result = 'failed' AND ($1::BIGINT IS NULL OR appliance_id = $1)
                   AND id > COALESCE((SELECT MAX(id) FROM runs s
                       WHERE s.appliance_id = r.appliance_id AND s.kind = 'backup'
                         AND s.result <> 'failed' AND s.job IS NOT DISTINCT FROM r.job
                         AND s.sources = r.sources), 0)
                 GROUP BY appliance_id, job, sources",
                &[&only],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<Vec<_>>>()?;
            Ok(assemble_facts(ends, starts, streaks))
        })
    }

    fn latest_runs(&self, kind: RunKind) -> Result<HashMap<i64, RunRecord>> {
        self.block(async {
            let c = self.conn().await?;
            query(
                &c,
                &format!(
                    "SELECT {RUN_COLUMNS}, appliance_id FROM runs WHERE id IN (
                       SELECT MAX(id) FROM runs WHERE kind = $1 GROUP BY appliance_id)"
                ),
                &[&kind.as_str()],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(17)?, run_row(r)?)))
            .collect()
        })
    }
}
