//! A per-op wall-time profile for `WEFT_PROFILE=1` (what `weft bench model` prints): model code
//! wraps each kind of op in [`op`], which, when profiling is on, waits for the device before and
//! after the op and adds the time to the op's row. The waits serialize host and device, so the
//! rows add up to more than an unprofiled step; their shares are what the profile is for.
//! Off (the default), [`op`] is a plain call.
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Calls and seconds of one op name.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub calls: u64,
    pub seconds: f64,
}

fn rows() -> &'static Mutex<BTreeMap<&'static str, OpTime>> {
    static ROWS: OnceLock<Mutex<BTreeMap<&'static str, OpTime>>> = OnceLock::new();
    ROWS.get_or_init(Default::default)
}

/// Whether `WEFT_PROFILE=1` (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("WEFT_PROFILE").is_ok_and(|v| v == "1"))
}

/// Runs `f` as op `name`; when profiling, `sync` (waiting for the device) runs before and after
/// and the time between is added to `name`'s row.
pub fn op<R>(name: &'static str, sync: impl Fn(), f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    sync();
    let start = Instant::now();
    let out = f();
    sync();
    let seconds = start.elapsed().as_secs_f64();
    let mut rows = rows().lock().unwrap_or_else(|p| p.into_inner());
    let row = rows.entry(name).or_default();
    row.calls += 1;
    row.seconds += seconds;
    out
}

/// The rows so far, largest time first, and clears them.
pub fn take() -> Vec<(&'static str, OpTime)> {
    let mut rows: Vec<_> = std::mem::take(&mut *rows().lock().unwrap_or_else(|p| p.into_inner()))
        .into_iter()
        .collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    rows
}

/// The rows as a table per step: op, calls per step, ms per step, share of the profiled total.
pub fn table(rows: &[(&'static str, OpTime)], steps: usize) -> String {
    let steps = steps.max(1) as f64;
    let total: f64 = rows.iter().map(|(_, t)| t.seconds).sum();
    let mut out = format!(
        "{:<22} {:>10} {:>12} {:>7}\n",
        "op (WEFT_PROFILE=1)", "calls/step", "ms/step", "share"
    );
    for (name, t) in rows {
        out += &format!(
            "{name:<22} {:>10.1} {:>12.2} {:>6.1}%\n",
            t.calls as f64 / steps,
            t.seconds * 1e3 / steps,
            100.0 * t.seconds / total.max(f64::MIN_POSITIVE)
        );
    }
    out += &format!(
        "{:<22} {:>10} {:>12.2}\n",
        "profiled total",
        "",
        total * 1e3 / steps
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shares_and_per_step_figures() {
        let rows = [
            (
                "gemm",
                OpTime {
                    calls: 8,
                    seconds: 0.3,
                },
            ),
            (
                "gelu",
                OpTime {
                    calls: 4,
                    seconds: 0.1,
                },
            ),
        ];
        let t = table(&rows, 2);
        assert!(t.contains("gemm"), "{t}");
        // 0.3 s over 2 steps = 150 ms per step, 75 % of the total; 4 calls per step.
        assert!(t.lines().nth(1).unwrap().contains("150.00"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("75.0%"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("4.0"), "{t}");
        assert!(t.lines().last().unwrap().contains("200.00"), "{t}");
    }
}
