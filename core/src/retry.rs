//! When a download asks a source again after a setback (issue 12): a busy
//! peer, one that broke off, stalled, fell below the floor or held nothing
//! more that was needed is not dropped for good, because in a crowd those are
//! the peers that hold the pieces a moment later. It rests, then rejoins the
//! queue of sources; a peer that sent bytes not matching the hash never does.
//! Pure: the transfer (`native-host/src/fetch/transfer.rs`) keeps the clock.

use std::time::Duration;

/// Setbacks a source may have before it is given up (and reported failed).
pub const MAX_SETBACKS: u32 = 4;

/// The first rest after a source faltered; each further one doubles it.
pub const FIRST_REST: Duration = Duration::from_secs(1);

/// What went wrong with a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setback {
    /// Every upload slot taken: ask again after this long.
    Busy(Duration),
    /// It could not be reached, broke off, stalled, was too slow, or held
    /// nothing more that was needed.
    Faltered,
    /// It sent bytes or verification data that do not match the hash.
    Lied,
}

/// How long a source rests before it is asked again, after its `earlier`
/// setbacks and this one; `None`: it is given up (a liar at once, any other
/// after [`MAX_SETBACKS`]). The caller counts a busy answer as a setback only
/// when the source kept the download waiting past its busy budget (then it
/// arrives here as [`Setback::Faltered`]); one that made room for a waiting
/// source is not counted.
pub fn rest_after(setback: Setback, earlier: u32) -> Option<Duration> {
    if earlier + 1 >= MAX_SETBACKS {
        return None;
    }
    match setback {
        Setback::Lied => None,
        Setback::Busy(wait) => Some(wait),
        Setback::Faltered => Some(FIRST_REST.saturating_mul(1 << earlier.min(8))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_rests_longer_each_time_and_a_liar_never_returns() {
        let busy = Setback::Busy(Duration::from_millis(300));
        assert_eq!(rest_after(busy, 0), Some(Duration::from_millis(300)));
        assert_eq!(
            rest_after(Setback::Faltered, 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            rest_after(Setback::Faltered, 1),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            rest_after(Setback::Faltered, 2),
            Some(Duration::from_secs(4))
        );
        assert_eq!(rest_after(Setback::Faltered, MAX_SETBACKS - 1), None);
        assert_eq!(rest_after(busy, MAX_SETBACKS - 1), None);
        assert_eq!(rest_after(Setback::Lied, 0), None);
    }
}
