//! Handing the memory a burst took back to the OS once the burst is over.
//!
//! mimalloc returns a thread's empty pages, and the blocks other threads freed into them,
//! only from that thread's own allocations: a tokio worker that went quiet after a burst of
//! 10,000 connections kept their 340 MiB for good (docs/benchmarks.md, "Memory budget").
//! So each worker collects its own heap as it runs out of work (tokio's `on_thread_park`),
//! at most once per [`COLLECT_EVERY`]: a busy worker parks thousands of times a second.
//!
//! A park inside that second skips its collection, and the last park of a burst usually
//! falls inside it. A worker that then sleeps on tokio's condition variable (every worker
//! but the one holding the I/O driver) has no timeout and wakes only for new work, so it
//! kept what it freed: after some runs of `make bench` the server stayed at 56–143 MiB
//! instead of 23–27. So a skipped collection is owed, and [`make_up_owed_collections`]
//! wakes the workers a little later while any worker owes one: a worker woken with nothing
//! to do parks again, and that park is due. While nothing is owed the task waits without
//! a timer. (A worker may park twice in one wake-up, the second time owing again; the
//! runtime then wakes every 2 s while that repeats, at the cost of a timer and a
//! collection of an idle heap.)

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often a runtime worker that ran out of work hands freed memory back to the OS.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// The park hook's state shared by every worker of one runtime.
#[derive(Clone)]
pub struct FreedMemory(Arc<Shared>);

struct Shared {
    /// Workers whose latest park skipped its collection.
    owing: AtomicUsize,
    /// Told when the first worker starts owing.
    owed: Notify,
    /// Collects the calling thread's heap.
    collect: fn(),
}

thread_local! {
    /// When this worker last collected, and whether a park has skipped one since.
    static WORKER: Cell<(Option<Instant>, bool)> = const { Cell::new((None, false)) };
}

impl FreedMemory {
    /// With mimalloc's own collection: for the runtime of a process whose global
    /// allocator is mimalloc.
    pub fn mimalloc() -> Self {
        Self::with(collect_mimalloc_heap)
    }

    fn with(collect: fn()) -> Self {
        FreedMemory(Arc::new(Shared {
            owing: AtomicUsize::new(0),
            owed: Notify::new(),
            collect,
        }))
    }

    /// Sets the hook on a runtime's builder; [`make_up_owed_collections`] must then run on
    /// that runtime.
    pub fn install(&self, builder: &mut tokio::runtime::Builder) {
        let this = self.clone();
        builder.on_thread_park(move || this.parking());
    }

    /// Called by each worker as it runs out of work.
    fn parking(&self) {
        let now = Instant::now();
        let (last, owes) = WORKER.get();
        let due = last.is_none_or(|at| now.duration_since(at) >= COLLECT_EVERY);
        if due {
            (self.0.collect)();
            if owes {
                self.0.owing.fetch_sub(1, Ordering::Relaxed);
            }
            WORKER.set((Some(now), false));
        } else if !owes {
            if self.0.owing.fetch_add(1, Ordering::Relaxed) == 0 {
                // Runs the task below on this worker, which then does not park yet.
                self.0.owed.notify_one();
            }
            WORKER.set((last, true));
        }
    }

    /// Runs for the life of the runtime: while any worker owes a collection, wakes the
    /// workers every [`MAKE_UP_AFTER`]. Once nothing is owed it waits for the next debt.
    pub async fn make_up_owed_collections(self) {
        loop {
            self.0.owed.notified().await;
            loop {
                tokio::time::sleep(MAKE_UP_AFTER).await;
                let owing = self.0.owing.load(Ordering::Relaxed);
                if owing == 0 {
                    break;
                }
                // Spawned here, a task lands in this worker's queue and tokio wakes a
                // parked worker to steal it; one per owing worker, plus one (the first of
                // a batch takes the worker's LIFO slot, which wakes no one).
                for _ in 0..=owing.min(64) {
                    tokio::spawn(std::future::ready(()));
                }
            }
        }
    }
}

/// Longer than [`COLLECT_EVERY`], so that the park after this task's own wake-up is due
/// and does not owe again (with exactly a second, timer jitter kept one worker owing, and
/// waking, for good).
const MAKE_UP_AFTER: Duration = Duration::from_secs(2);

/// Forced, so the pages go back at once instead of after mimalloc's purge delay, which a
/// worker that stays parked would never reach.
#[allow(unsafe_code)]
fn collect_mimalloc_heap() {
    // SAFETY: mi_collect only walks the calling thread's own heap; with another global
    // allocator that heap is empty and this does nothing.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    use super::*;

    /// The last collection of each thread, as the test's collect function saw it.
    static COLLECTED: Mutex<Option<HashMap<ThreadId, Instant>>> = Mutex::new(None);

    fn record_collection() {
        let mut collected = COLLECTED.lock().unwrap();
        collected
            .get_or_insert_with(HashMap::new)
            .insert(std::thread::current().id(), Instant::now());
    }

    /// Every worker that ran out of work during a burst collects again once the burst is
    /// over, although its last park came within a second of its previous collection (the
    /// case that kept 56–143 MiB after some bench runs).
    #[test]
    fn every_worker_collects_after_the_burst_ends() {
        let freed = FreedMemory::with(record_collection);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        freed.install(&mut builder);
        let runtime = builder.build().unwrap();
        runtime.spawn(freed.clone().make_up_owed_collections());

        // The burst: short tasks spread over both workers for 300 ms, so each parks many
        // times, collecting at its first park and skipping the later ones.
        let workers: Vec<ThreadId> = runtime.block_on(async {
            let until = Instant::now() + Duration::from_millis(300);
            let mut seen = std::collections::HashSet::new();
            while Instant::now() < until {
                let mut batch = tokio::task::JoinSet::new();
                for _ in 0..8 {
                    batch.spawn(async {
                        let buffer = vec![1u8; 64 * 1024];
                        std::hint::black_box(&buffer);
                        std::thread::current().id()
                    });
                }
                while let Some(id) = batch.join_next().await {
                    seen.insert(id.unwrap());
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            seen.into_iter().collect()
        });
        let burst_over = Instant::now();
        assert!(
            freed.0.owing.load(Ordering::Relaxed) > 0,
            "the burst's last parks skipped their collections"
        );

        // Quiet from here on: nothing spawned, nothing waited for on the runtime.
        let collected_since_burst = || {
            let collected = COLLECTED.lock().unwrap().clone().unwrap_or_default();
            workers
                .iter()
                .filter(|worker| collected.get(worker).is_some_and(|at| *at > burst_over))
                .count()
        };
        let deadline = burst_over + MAKE_UP_AFTER * 3 + Duration::from_secs(3);
        while (collected_since_burst() < workers.len() || freed.0.owing.load(Ordering::Relaxed) > 0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            collected_since_burst(),
            workers.len(),
            "every worker collected after the burst"
        );
        assert_eq!(
            freed.0.owing.load(Ordering::Relaxed),
            0,
            "nothing still owed"
        );
        runtime.shutdown_background();
    }
}
