//! Finding the knee: which rate to offer next, and which offered rate was the knee. Pure
//! functions over the steps tried so far, so the rule is tested apart from any network.
//!
//! The rule (also in the README):
//! - a step *passes* if it had no errors (every answer 2xx, no IO error, no timeout), the
//!   generator never fell more than `max_lag` behind the schedule (a backlog beyond that means
//!   offered load is queueing faster than it is served: over the knee), it achieved at least
//!   95 % of the offered rate, and its p99 latency (from the due instant) is at most `max_p99`;
//! - rates go up geometrically (`start`, `start·factor`, …) until a step fails, then bisect
//!   geometrically between the highest passing rate below the lowest failing rate and that
//!   failing rate, until they are within `resolution` of each other or `max_bisections` steps
//!   were spent;
//! - the knee is the highest passing rate below the lowest failing rate. A pass *above* a
//!   failure (noise on a shared machine) is ignored: the knee is the conservative one;
//! - so the search's first failure is offered once more before it counts ([`confirm`]): it
//!   sets the bracket, and a single stall there would otherwise decide the whole search.

/// What the pass rule looks at in one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub offered: f64,
    pub achieved: f64,
    pub errors: u64,
    pub backlogged: bool,
    pub p99_ms: f64,
}

/// The pass rule's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// Achieved / offered at least this (0.95).
    pub min_achieved: f64,
    /// p99 at most this.
    pub max_p99_ms: f64,
}

impl Rule {
    pub fn passes(&self, o: &Outcome) -> bool {
        o.errors == 0 && !o.backlogged && o.achieved >= self.min_achieved * o.offered && o.p99_ms <= self.max_p99_ms
    }

    /// Why a step failed, for the table (empty if it passed).
    pub fn why(&self, o: &Outcome) -> String {
        let mut v = Vec::new();
        if o.errors > 0 {
            v.push(format!("{} errors", o.errors));
        }
        if o.backlogged {
            v.push("backlog".to_owned());
        }
        if o.achieved < self.min_achieved * o.offered {
            v.push(format!("achieved {:.0}%", 100.0 * o.achieved / o.offered.max(1.0)));
        }
        if o.p99_ms > self.max_p99_ms {
            v.push(format!("p99 > {} ms", self.max_p99_ms));
        }
        v.join(", ")
    }
}

/// How rates are stepped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Search {
    pub start: f64,
    pub factor: f64,
    pub min_rate: f64,
    pub max_rate: f64,
    /// Stop bisecting when lowest failing / highest passing ≤ 1 + this.
    pub resolution: f64,
    pub max_bisections: usize,
}

/// `(offered rate, passed)` in the order they were tried.
pub type Tried = [(f64, bool)];

fn bracket(tried: &Tried) -> (Option<f64>, Option<f64>) {
    let first_fail = tried.iter().filter(|t| !t.1).map(|t| t.0).reduce(f64::min);
    let best_pass = tried.iter().filter(|t| t.1 && first_fail.is_none_or(|f| t.0 < f)).map(|t| t.0).reduce(f64::max);
    (best_pass, first_fail)
}

/// The next rate to offer, or `None` when the search is over.
pub fn next_rate(s: &Search, tried: &Tried) -> Option<f64> {
    let Some(&(last, _)) = tried.last() else { return Some(s.start.round()) };
    let next = match bracket(tried) {
        (Some(pass), None) => {
            if pass >= s.max_rate {
                return None;
            }
            (pass * s.factor).min(s.max_rate)
        }
        (None, Some(fail)) => {
            let down = fail / s.factor;
            if down < s.min_rate {
                return None;
            }
            down
        }
        (Some(pass), Some(fail)) => {
            let first_fail_at = tried.iter().position(|t| !t.1).unwrap_or(tried.len());
            let bisections = tried.len() - first_fail_at - 1;
            if fail / pass <= 1.0 + s.resolution || bisections >= s.max_bisections {
                return None;
            }
            (pass * fail).sqrt()
        }
        (None, None) => last * s.factor,
    };
    let next = next.round();
    // Rounding can land on a rate already tried: nothing new to learn.
    (!tried.iter().any(|t| t.0 == next)).then_some(next)
}

/// Whether a step that just failed (not yet in `tried`) must be offered once more, the second
/// result standing for the rate: yes for the search's first failure. It sets the bracket every
/// later step stays inside, so one stall in it (a compaction, a neighbour's burst) would pull
/// the knee down by up to the factor — or, at the first step, send the search below every rate
/// worth trying. Later failures only narrow a confirmed bracket, by one bisection at most.
pub fn confirm(tried: &Tried) -> bool {
    tried.iter().all(|t| t.1)
}

/// The knee: the highest passing rate below the lowest failing one.
pub fn knee(tried: &Tried) -> Option<f64> {
    bracket(tried).0
}

/// Whether the knee is only a lower bound (no step failed: the target was never saturated).
pub fn saturated(tried: &Tried) -> bool {
    tried.iter().any(|t| !t.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Search =
        Search { start: 1000.0, factor: 2.0, min_rate: 100.0, max_rate: 100_000.0, resolution: 0.1, max_bisections: 4 };

    /// Runs the search against a target that passes every rate ≤ `capacity`.
    fn search(capacity: f64) -> Vec<(f64, bool)> {
        let mut tried = Vec::new();
        while let Some(r) = next_rate(&S, &tried) {
            tried.push((r, r <= capacity));
            assert!(tried.len() < 40, "search must end");
        }
        tried
    }

    #[test]
    fn geometric_then_bisection() {
        let t = search(5000.0);
        let rates: Vec<f64> = t.iter().map(|x| x.0).collect();
        assert_eq!(&rates[..4], &[1000.0, 2000.0, 4000.0, 8000.0]);
        // sqrt(4000·8000) = 5657 fails, sqrt(4000·5657) = 4757 passes, …
        assert_eq!(rates[4], 5657.0);
        let k = knee(&t).expect("knee");
        assert!((4500.0..=5000.0).contains(&k), "knee {k} within 10% below capacity");
        assert!(saturated(&t));
    }

    #[test]
    fn bisection_is_bounded() {
        let s = Search { max_bisections: 1, resolution: 0.0001, ..S };
        let mut tried = vec![(1000.0, true), (2000.0, false)];
        let mid = next_rate(&s, &tried).expect("one bisection");
        assert_eq!(mid, 1414.0);
        tried.push((mid, true));
        assert_eq!(next_rate(&s, &tried), None);
        assert_eq!(knee(&tried), Some(1414.0));
    }

    #[test]
    fn never_saturated_stops_at_max() {
        let t = search(f64::INFINITY);
        assert_eq!(t.last().map(|x| x.0), Some(100_000.0));
        assert_eq!(knee(&t), Some(100_000.0));
        assert!(!saturated(&t), "reported as a lower bound");
    }

    #[test]
    fn first_step_fails_goes_down() {
        let t = search(300.0);
        assert_eq!(t[0], (1000.0, false));
        assert_eq!(t[1], (500.0, false));
        assert_eq!(t[2], (250.0, true));
        assert!(knee(&t).is_some_and(|k| (250.0..=300.0).contains(&k)));
        assert_eq!(knee(&search(50.0)), None, "nothing passes above min_rate");
    }

    /// Runs the search as `Runner::search` does, against a target that passes every rate ≤
    /// `capacity` except the offers numbered in `stalls` (1-based), which fail once each.
    fn search_with_stalls(capacity: f64, stalls: &[usize]) -> (Vec<(f64, bool)>, usize) {
        let mut tried = Vec::new();
        let mut offers = 0;
        let mut offer = |r: f64| {
            offers += 1;
            r <= capacity && !stalls.contains(&offers)
        };
        while let Some(r) = next_rate(&S, &tried) {
            let mut pass = offer(r);
            if !pass && confirm(&tried) {
                pass = offer(r);
            }
            tried.push((r, pass));
            assert!(tried.len() < 40, "search must end");
        }
        (tried, offers)
    }

    #[test]
    fn a_stall_in_the_first_failure_does_not_decide_the_knee() {
        let clean = knee(&search(5000.0));
        // A stall at the very first step: confirmed away, same knee (it used to be ≤ 1000/2).
        let (t, offers) = search_with_stalls(5000.0, &[1]);
        assert_eq!(knee(&t), clean);
        // Two extra offers: the stall's, and the real first failure's later (noise is no failure).
        assert_eq!(offers, t.len() + 2);
        // A stall in the geometric climb (offer 3 is 4000/s): same knee.
        assert_eq!(knee(&search_with_stalls(5000.0, &[3]).0), clean);
        // A real first failure is confirmed by its second offer and stands.
        let (t, offers) = search_with_stalls(5000.0, &[]);
        assert_eq!(knee(&t), clean);
        assert_eq!(offers, t.len() + 1, "only the first failure is offered twice");
        // Below min_rate nothing passes, confirmed or not.
        assert_eq!(knee(&search_with_stalls(50.0, &[]).0), None);
    }

    #[test]
    fn only_the_first_failure_is_confirmed() {
        assert!(confirm(&[]));
        assert!(confirm(&[(1000.0, true), (2000.0, true)]));
        assert!(!confirm(&[(1000.0, true), (2000.0, false)]));
    }

    #[test]
    fn a_pass_above_a_failure_is_ignored() {
        let t = [(1000.0, true), (2000.0, true), (4000.0, false), (3000.0, false), (3500.0, true)];
        assert_eq!(knee(&t), Some(2000.0));
    }

    #[test]
    fn pass_rule() {
        let r = Rule { min_achieved: 0.95, max_p99_ms: 100.0 };
        let ok = Outcome { offered: 1000.0, achieved: 960.0, errors: 0, backlogged: false, p99_ms: 5.0 };
        assert!(r.passes(&ok));
        assert!(r.why(&ok).is_empty());
        assert!(!r.passes(&Outcome { errors: 1, ..ok }));
        assert!(!r.passes(&Outcome { backlogged: true, ..ok }));
        assert!(!r.passes(&Outcome { achieved: 949.0, ..ok }));
        assert!(!r.passes(&Outcome { p99_ms: 100.5, ..ok }));
        assert_eq!(r.why(&Outcome { achieved: 500.0, errors: 3, ..ok }), "3 errors, achieved 50%");
    }
}
