//! Signing rounds that meet an unavailable PKCS#11 token: the signer answered `TokenUnavailable`
//! ([`EngineError::SignerTokenUnavailable`]) — its token is lost, or this workspace's key object
//! is missing from a token that answers. Nothing was signed, and the signer looks for the token
//! (and the key) again by itself, on a timescale of seconds (re-initialising its module at once,
//! then after 1 s, 2 s, … for a lost token; after 5 s, 10 s, … for a missing key): not the
//! milliseconds of the round's ordinary backoff. So such a round
//!
//! - waits [`PAUSE_FIRST`], doubling after each one that meets the token again, up to
//!   [`PAUSE_MAX`], and goes on at once when the signer's health comes back up (a lost token
//!   found again: the probe's next ping answers within half a second);
//! - is counted as `allowly_engine_signer_errors_total{kind="token_unavailable"}`, not as a
//!   generic `error`, and does not log a line of its own per round: the workspace's mark
//!   ([`Divergence::TokenUnavailable`]) is logged when it is set, and its clearing when the
//!   first round signs again;
//! - marks the workspace, so it refuses new receipts with `503 signer_token_unavailable`
//!   (`Retry-After`) rather than acknowledging decisions whose receipts cannot be signed, and
//!   `/readyz` lists it under that code. A lost token also fails the signer's health check,
//!   which makes every workspace refuse with the same code and `/readyz` unready
//!   ([`crate::health::Health::outage`]).
//!
//! Kept apart from `pipeline.rs` so that the task loop only calls [`TokenWait::failed`] and
//! [`TokenWait::signed`].

use std::time::Duration;

use crate::health::Divergence;
use crate::services::Services;

/// The first pause after a round met an unavailable token. The signer re-initialises its module
/// at most once a second, so a round sooner than that cannot find the token back.
pub(crate) const PAUSE_FIRST: Duration = Duration::from_secs(1);
/// The longest pause while the token stays unavailable. Bounds how long after the signer found a
/// missing key again the workspace still refuses new receipts (a lost token found again ends
/// the pause at once, through the health); and each round is a request the signer answers
/// (after reading its bodies), so ten thousand workspaces whose keys are missing cost the signer
/// at most a thousand refused rounds a second — fewer where the instance's signing rate binds.
pub(crate) const PAUSE_MAX: Duration = Duration::from_secs(10);

/// One signing task's pause while the token is unavailable for its workspace.
#[derive(Debug, Default)]
pub(super) struct TokenWait {
    /// The pause after the last round that met the token; `None` until one does, and again
    /// once a round signs.
    pause: Option<Duration>,
}

impl TokenWait {
    /// A round of `ws` met an unavailable token (`why`: the signer's words): counts it, marks
    /// the workspace (logged when it is set), and waits the pause before the next round, or
    /// until the signer is up again after an outage, whichever comes first.
    pub(super) async fn failed(&mut self, shared: &Services, ws: &str, why: &str) {
        shared.metrics.signer_errors.with_label_values(&["token_unavailable"]).inc();
        shared.diverged.mark(ws, Divergence::TokenUnavailable, why, &shared.metrics);
        let pause = next_pause(self.pause);
        self.pause = Some(pause);
        let back = shared.health.came_up();
        tokio::pin!(back);
        // Registered before the sleep starts: a recovery meanwhile still ends the wait.
        back.as_mut().enable();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = back => {}
        }
    }

    /// A round of `ws` signed: if the token was unavailable for it, it takes new receipts again.
    pub(super) fn signed(&mut self, shared: &Services, ws: &str) {
        if self.pause.take().is_some() && shared.diverged.clear_if(ws, Divergence::TokenUnavailable, &shared.metrics) {
            tracing::info!(workspace = %ws, "the signer's key token signs for this workspace again: it takes new receipts");
        }
    }
}

/// The pause after `last`: [`PAUSE_FIRST`] the first time, then twice the last, at most
/// [`PAUSE_MAX`].
fn next_pause(last: Option<Duration>) -> Duration {
    last.map_or(PAUSE_FIRST, |p| (p * 2).min(PAUSE_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_from_one_second_to_ten() {
        let mut last = None;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let p = next_pause(last);
            seen.push(p.as_secs());
            last = Some(p);
        }
        assert_eq!(seen, [1, 2, 4, 8, 10, 10, 10]);
    }
}
