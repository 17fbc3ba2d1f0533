//! Work spread over threads, results kept in input order.

use anyhow::Result;

/// One worker per core (at most 8).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// `f` applied to every item by `workers` threads, each taking the next
/// item as it finishes one; the results come back in the items' order. On
/// failure the error of the first failing item (in that order) is
/// returned; items not yet started when one fails are left undone.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<std::sync::Mutex<Option<Result<R>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        return;
                    };
                    let r = f(item);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                })
            })
            .collect();
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
    let results: Vec<Option<Result<R>>> = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    // An item left unstarted after a failure is not an error of its own:
    // the failure (the first in item order) is.
    let mut out = Vec::with_capacity(results.len());
    let mut unstarted = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => unstarted = unstarted.or(Some(i)),
        }
    }
    match unstarted {
        Some(i) => anyhow::bail!("item {i} was not processed"),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_input_order_whatever_finishes_first() {
        let items: Vec<u64> = (0..50).collect();
        let out = map(&items, 4, |&n| {
            std::thread::sleep(std::time::Duration::from_millis((50 - n) % 7));
            Ok(n * 2)
        })
        .unwrap();
        assert_eq!(out, items.iter().map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_failing_item_is_the_error() {
        let items: Vec<u64> = (0..20).collect();
        let err = map(&items, 1, |&n| {
            if n >= 5 {
                anyhow::bail!("item {n} failed")
            }
            Ok(n)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "item 5 failed");
        // Control: nothing fails, everything comes back.
        assert_eq!(map(&items, 3, |&n| Ok(n)).unwrap(), items);
        assert!(map(&[] as &[u64], 3, |&n| Ok(n)).unwrap().is_empty());
    }
}
