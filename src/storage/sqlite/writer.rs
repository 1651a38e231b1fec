//! The one writer thread and its group commit: every queued write is applied in its own
//! savepoint of one `BEGIN IMMEDIATE` transaction, committed once (one fsync), then answered.

use super::*;

/// A unit of work for the writer thread: applied inside its own savepoint of a group commit,
/// answered only after the group's COMMIT (or its failure).
pub(super) trait WriteJob: Send {
    /// Run the work; `true` keeps its savepoint, `false` rolls it back.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Deliver the result once the group's fate is known.
    fn finish(self: Box<Self>, commit: Result<()>);
}

pub(super) struct Job<T, F> {
    pub(super) work: Option<F>,
    pub(super) result: Option<Result<T>>,
    pub(super) reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let r = match self.work.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Unavailable("write job applied twice".into())),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let r = match (commit, self.result) {
            (Ok(()), Some(r)) => r,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("write job never ran".into())),
        };
        // The caller may have gone away (client disconnected); the data is stored anyway.
        let _ = self.reply.send(r);
    }
}

pub(super) type BoxedJob = Box<dyn WriteJob>;

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<BoxedJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let commit = commit_group(&mut conn, &mut jobs);
        for job in jobs {
            job.finish(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            });
        }
    }
}

/// Apply every job in one transaction, each in its own savepoint so one job's failure does not
/// undo the others; then commit (the one fsync).
pub(super) fn commit_group(conn: &mut Connection, jobs: &mut [BoxedJob]) -> Result<()> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    for job in jobs.iter_mut() {
        let mut sp = tx.savepoint().map_err(db_err)?;
        if job.apply(&sp) {
            sp.commit().map_err(db_err)?;
        } else {
            // Dropping an uncommitted savepoint rolls back just this job.
            sp.rollback().map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}
