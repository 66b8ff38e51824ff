//! Swarm download decisions (issue 12 point 2): what a host that is still
//! downloading an object can serve ([`HaveMap`], one bit per verified 16 KiB
//! group), and which piece a downloader asks each of its sources for next
//! ([`pick`]): the rarest among its sources first, so the swarm spreads the
//! pieces instead of everyone asking the same holder for the same bytes, and
//! an end game that asks a second source for the last pieces in flight, so a
//! slow source cannot make the tail.
//!
//! A piece is [`PIECE_GROUPS`] groups; the bits stay per group so a host that
//! verified part of a piece still says so exactly. Pure: the transfer
//! (`native-host/src/fetch/transfer.rs`) keeps the state and does the I/O.

use crate::verified::GROUP;

/// Groups per piece (128 KiB): the unit a downloader asks one source for.
/// Smaller pieces reach their first holder and are passed on sooner (a
/// crowd's uplinks fill sooner); each costs a request. 64 KiB filled them
/// sooner still but cost a crowd of 32 on two cores 25 % more time
/// (`BENCHMARKS.md`, session 12).
pub const PIECE_GROUPS: u64 = 8;

/// Most sources fetching the same piece at once in the end game.
pub const MAX_DUPLICATES: u32 = 2;

/// Pieces of an object of `groups` groups.
pub fn piece_count(groups: u64) -> u64 {
    groups.div_ceil(PIECE_GROUPS)
}

/// The groups `[first, end)` of piece `piece`.
pub fn piece_groups(groups: u64, piece: u64) -> (u64, u64) {
    let first = piece.saturating_mul(PIECE_GROUPS).min(groups);
    (first, first.saturating_add(PIECE_GROUPS).min(groups))
}

/// The groups `[first, end)` that the inclusive byte range `first..=last`
/// covers exactly, or `None` when it does not start and end on group edges of
/// an object of `size` bytes (a partial holder serves whole verified groups).
pub fn range_groups(size: u64, (first, last): (u64, u64)) -> Option<(u64, u64)> {
    if first > last || last >= size || first % GROUP != 0 {
        return None;
    }
    let end = last + 1;
    if end != size && end % GROUP != 0 {
        return None;
    }
    Some((first / GROUP, end.div_ceil(GROUP)))
}

/// Why a have-map from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaveMapError {
    /// Its length is not the one the object's group count gives.
    #[error("have-map of {got} bytes for {groups} groups (expected {expected})")]
    WrongLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
        /// The object's groups.
        groups: u64,
    },
    /// A bit past the last group is set.
    #[error("have-map names groups past the end of the object")]
    PastTheEnd,
}

/// Which groups of an object a host holds verified: bit `g % 8` of byte
/// `g / 8` (least significant first) for group `g`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveMap {
    groups: u64,
    bits: Vec<u8>,
}

impl HaveMap {
    /// Bytes of the map of an object of `groups` groups.
    pub fn byte_len(groups: u64) -> usize {
        usize::try_from(groups.div_ceil(8)).unwrap_or(usize::MAX)
    }

    /// Nothing held.
    pub fn empty(groups: u64) -> Self {
        Self {
            groups,
            bits: vec![0; Self::byte_len(groups)],
        }
    }

    /// Everything held.
    pub fn full(groups: u64) -> Self {
        let mut m = Self::empty(groups);
        for g in 0..groups {
            m.set(g);
        }
        m
    }

    /// Parses a map received for an object of `groups` groups: exactly
    /// [`HaveMap::byte_len`] bytes, no bit past the end.
    pub fn from_bytes(groups: u64, bytes: &[u8]) -> Result<Self, HaveMapError> {
        let expected = Self::byte_len(groups);
        if bytes.len() != expected {
            return Err(HaveMapError::WrongLength {
                got: bytes.len(),
                expected,
                groups,
            });
        }
        let m = Self {
            groups,
            bits: bytes.to_vec(),
        };
        let tail = groups % 8;
        if tail != 0 && bytes.last().is_some_and(|b| b >> tail != 0) {
            return Err(HaveMapError::PastTheEnd);
        }
        Ok(m)
    }

    /// The bytes, as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// The object's group count.
    pub fn groups(&self) -> u64 {
        self.groups
    }

    /// Whether group `g` is held.
    pub fn has(&self, g: u64) -> bool {
        g < self.groups
            && usize::try_from(g / 8)
                .ok()
                .and_then(|i| self.bits.get(i))
                .is_some_and(|b| b & (1 << (g % 8)) != 0)
    }

    /// Marks group `g` held (ignored past the end).
    pub fn set(&mut self, g: u64) {
        if g < self.groups
            && let Some(b) = usize::try_from(g / 8)
                .ok()
                .and_then(|i| self.bits.get_mut(i))
        {
            *b |= 1 << (g % 8);
        }
    }

    /// Whether every group of `[first, end)` is held (an empty span is not).
    pub fn has_all(&self, first: u64, end: u64) -> bool {
        first < end && (first..end).all(|g| self.has(g))
    }

    /// Whether piece `piece` is held whole.
    pub fn has_piece(&self, piece: u64) -> bool {
        let (a, b) = piece_groups(self.groups, piece);
        self.has_all(a, b)
    }

    /// Groups held.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Whether every group is held.
    pub fn is_complete(&self) -> bool {
        self.count() == self.groups
    }
}

/// What the downloader knows of one piece.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PieceState {
    /// Every group verified and written.
    pub done: bool,
    /// Sources fetching it now.
    pub in_flight: u32,
    /// Sources known to hold it (from their have-maps).
    pub holders: u32,
}

/// What to ask a source for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A piece nobody is fetching yet.
    Fresh(u64),
    /// End game: a piece another source is fetching, asked again here.
    Duplicate(u64),
    /// Nothing this source holds is needed now; it may hold more later.
    Wait,
    /// Every piece is done.
    Finished,
}

/// The next piece to ask a source holding `has(piece)` for: of the pieces
/// nobody fetches yet, the one the fewest sources hold (rarest first). Ties
/// among pieces every one of the `sources` holds go in order (the bytes
/// stream to the reader in order); among pieces some source lacks they are
/// broken by `seed` (a per-download rotation, so downloaders starting at once
/// from the same partial holders do not all ask for the same piece, and have
/// different pieces to trade). When every missing piece is already being
/// fetched (the end game) a piece fetched by fewer than [`MAX_DUPLICATES`]
/// sources is asked again, the least duplicated first.
pub fn pick(pieces: &[PieceState], has: impl Fn(u64) -> bool, seed: u64, sources: u32) -> Pick {
    let n = pieces.len() as u64;
    if pieces.iter().all(|p| p.done) {
        return Pick::Finished;
    }
    let rotated = |i: u64| {
        let held_by_all = pieces
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .is_some_and(|p| p.holders >= sources);
        if held_by_all {
            i
        } else {
            (i + n - seed % n.max(1)) % n.max(1)
        }
    };
    let candidates = || {
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p))
            .filter(|(i, p)| !p.done && has(*i))
    };
    if let Some((i, _)) = candidates()
        .filter(|(_, p)| p.in_flight == 0)
        .min_by_key(|(i, p)| (p.holders, rotated(*i)))
    {
        return Pick::Fresh(i);
    }
    let end_game = pieces.iter().all(|p| p.done || p.in_flight > 0);
    if end_game
        && let Some((i, _)) = candidates()
            .filter(|(_, p)| p.in_flight < MAX_DUPLICATES)
            .min_by_key(|(i, p)| (p.in_flight, p.holders, rotated(*i)))
    {
        return Pick::Duplicate(i);
    }
    Pick::Wait
}

/// A fresh pick `first` grown into a run of following pieces that are fresh
/// too (not done, nobody fetching, held by the source), up to `max` pieces in
/// all: one request instead of one per piece from a source with a long run.
/// Returns the end (exclusive) of the run.
pub fn extend_run(pieces: &[PieceState], has: impl Fn(u64) -> bool, first: u64, max: u64) -> u64 {
    let mut end = first + 1;
    while end - first < max
        && pieces
            .get(usize::try_from(end).unwrap_or(usize::MAX))
            .is_some_and(|p| !p.done && p.in_flight == 0 && has(end))
    {
        end += 1;
    }
    end
}

/// Times the server, seeding (issue 12 point 3), sends each piece of an
/// object during a crowd before it sends any piece again: once puts every
/// piece in the swarm.
pub const SEED_COPIES: u8 = 1;

/// Once every piece is in the swarm, the server's uplink would idle while the
/// peers pass the pieces on; it seeds up to this many more pieces, in percent
/// of the object (the latest-seeded first: they are the rarest), so the
/// origin sends at most 1.4 × the object in a crowd (issue 12's goal: 1.5 ×).
pub const SEED_EXTRA_PERCENT: u64 = 40;

/// Objects from this size up are fetched as a swarm: a client takes pieces
/// from several sources at once, and the server seeds a crowd for them
/// (issue 12). Smaller ones come whole from one source.
pub const SWARM_FROM: u64 = 4 << 20;

/// Which end of the object the server seeds first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrder {
    /// The lowest-numbered piece first: nobody is sent a whole copy, so a
    /// lone client gets its pieces in order (and streams them at once).
    FromFront,
    /// The highest-numbered first: a whole copy on its way to the first
    /// receiver goes front to back, so the two overlap least.
    FromBack,
}

/// Most pieces the server seeds in one answer to a client receiving the
/// object alone (16 MiB), so a lone download of a large object is a few
/// dozen requests, not one per piece.
pub const SEED_RUN_ALONE: u64 = (16 << 20) / (PIECE_GROUPS * GROUP);

/// How many pieces one seeded answer may carry: one in a crowd (the pieces
/// spread over it); for a client receiving the object alone, one more than
/// the server has seeded of it so far, up to [`SEED_RUN_ALONE`] (so a crowd
/// forming a moment after its first asker still finds most pieces unseeded).
pub fn seed_run_len(seeded_so_far: u64, alone: bool) -> u64 {
    if alone {
        (seeded_so_far + 1).min(SEED_RUN_ALONE)
    } else {
        1
    }
}

/// The run of pieces from `first` (which [`seed_pick`] chose) that one
/// answer seeds: the pieces after it the client lacks and nobody was seeded
/// yet, at most `max` in all; the end, exclusive.
pub fn seed_run(sent: &[u8], has: &HaveMap, first: u64, max: u64) -> u64 {
    let pieces = sent.len() as u64;
    let mut end = first + 1;
    while end < pieces
        && end - first < max
        && sent[end as usize] < SEED_COPIES
        && !has.has_piece(end)
    {
        end += 1;
    }
    end
}

/// Most pieces the server seeds of an object of `pieces` pieces in one crowd.
pub fn seed_budget(pieces: u64) -> u64 {
    pieces * (u64::from(SEED_COPIES) * 100 + SEED_EXTRA_PERCENT) / 100
}

/// The piece the server seeds next to a client holding `has` (its have-map,
/// with the pieces it is fetching counted as held), given how often it has
/// seeded each piece (`sent`, one count per piece): of the pieces the client
/// lacks, one not yet seeded [`SEED_COPIES`] times, the first in `order`;
/// once every piece was, while the extra budget lasts
/// ([`SEED_EXTRA_PERCENT`]), the one seeded least often, the last in `order`
/// (the latest seeded). So a crowd asking at once gets different pieces and
/// the server's uplink goes to what the swarm lacks. `None`: nothing to seed
/// to this client (or `sent` does not fit `has`).
pub fn seed_pick(sent: &[u8], has: &HaveMap, order: SeedOrder) -> Option<u64> {
    let pieces = piece_count(has.groups());
    if sent.len() as u64 != pieces {
        return None;
    }
    let first_round = sent.iter().any(|c| *c < SEED_COPIES);
    let total: u64 = sent.iter().map(|c| u64::from(*c)).sum();
    let budget = seed_budget(pieces);
    let lacking = (0..pieces).filter(|p| !has.has_piece(*p));
    // Earlier in `order` is smaller.
    let rank = |p: u64| match order {
        SeedOrder::FromFront => p,
        SeedOrder::FromBack => pieces - 1 - p,
    };
    if first_round {
        lacking
            .filter(|p| sent[*p as usize] < SEED_COPIES)
            .min_by_key(|p| rank(*p))
    } else if total < budget {
        lacking.min_by_key(|p| (sent[*p as usize], std::cmp::Reverse(rank(*p))))
    } else {
        None
    }
}

/// Counts as seeded once (in `sent`, one count per piece) every piece wholly
/// within the first `carried` bytes: a whole copy on its way carried them
/// into the swarm already, and seeding them again would only add to the
/// origin's bytes.
pub fn count_carried(sent: &mut [u8], carried: u64) {
    let piece_bytes = PIECE_GROUPS * GROUP;
    let whole = usize::try_from(carried / piece_bytes).unwrap_or(usize::MAX);
    for count in sent.iter_mut().take(whole) {
        *count = (*count).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_a_whole_copy_carried_are_not_seeded_again() {
        let piece = PIECE_GROUPS * GROUP;
        let groups = 4 * PIECE_GROUPS;
        let nothing = HaveMap::empty(groups);
        let mut sent = vec![0u8; 4];
        // One and a half pieces carried: piece 0 counts, piece 1 not yet.
        count_carried(&mut sent, piece + piece / 2);
        assert_eq!(sent, [1, 0, 0, 0]);
        for want in [3, 2, 1] {
            let p = seed_pick(&sent, &nothing, SeedOrder::FromBack).unwrap();
            assert_eq!(p, want);
            sent[p as usize] += 1;
        }
        // Then the extra budget (4 pieces: one more), the latest seeded
        // first, and no more.
        assert_eq!(seed_budget(4), 5);
        assert_eq!(seed_pick(&sent, &nothing, SeedOrder::FromBack), Some(0));
        sent[0] += 1;
        assert_eq!(seed_pick(&sent, &nothing, SeedOrder::FromBack), None);
        // Past the end, or nothing carried: no harm.
        let mut sent = vec![0u8; 2];
        count_carried(&mut sent, u64::MAX);
        assert_eq!(sent, [1, 1]);
        let mut sent = vec![2u8, 0];
        count_carried(&mut sent, 0);
        assert_eq!(sent, [2, 0]);
    }

    #[test]
    fn the_server_seeds_each_piece_once_from_the_back_and_only_what_is_lacking() {
        let groups = 4 * PIECE_GROUPS;
        let nothing = HaveMap::empty(groups);
        // A crowd asking at once: four different pieces, the last first.
        let mut sent = vec![0u8; 4];
        let mut order = Vec::new();
        for _ in 0..4 {
            let p = seed_pick(&sent, &nothing, SeedOrder::FromBack).unwrap();
            sent[p as usize] += 1;
            order.push(p);
        }
        assert_eq!(order, [3, 2, 1, 0]);
        // Each seeded once: the extra budget goes to the latest seeded
        // (the rarest), then nothing more.
        assert_eq!(seed_pick(&sent, &nothing, SeedOrder::FromBack), Some(0));
        sent[0] += 1;
        assert_eq!(seed_pick(&sent, &nothing, SeedOrder::FromBack), None);
        // In the first round a client is seeded only what was not seeded yet.
        let mut has = HaveMap::empty(groups);
        (0..PIECE_GROUPS).for_each(|g| has.set(g));
        assert_eq!(seed_pick(&[0, 1, 1, 1], &has, SeedOrder::FromBack), None);
        // Only what the client lacks: holding pieces 2 and 3 (their groups)
        // it gets piece 1.
        let mut has = HaveMap::empty(groups);
        for g in 2 * PIECE_GROUPS..groups {
            has.set(g);
        }
        assert_eq!(seed_pick(&[0; 4], &has, SeedOrder::FromBack), Some(1));
        // Part of a piece held is not the piece held.
        has.set(PIECE_GROUPS);
        assert_eq!(seed_pick(&[0; 4], &has, SeedOrder::FromBack), Some(1));
        // A client holding everything gets nothing; a wrong ledger gets nothing.
        assert_eq!(
            seed_pick(&[0; 4], &HaveMap::full(groups), SeedOrder::FromBack),
            None
        );
        assert_eq!(seed_pick(&[0; 3], &nothing, SeedOrder::FromBack), None);
    }

    #[test]
    fn with_no_whole_copy_on_its_way_the_server_seeds_from_the_front() {
        let groups = 3 * PIECE_GROUPS;
        let nothing = HaveMap::empty(groups);
        let mut sent = vec![0u8; 3];
        let mut order = Vec::new();
        for _ in 0..3 {
            let p = seed_pick(&sent, &nothing, SeedOrder::FromFront).unwrap();
            sent[p as usize] += 1;
            order.push(p);
        }
        assert_eq!(order, [0, 1, 2], "a lone client gets its pieces in order");
        // A lone client holding them all is seeded nothing more.
        assert_eq!(
            seed_pick(&sent, &HaveMap::full(groups), SeedOrder::FromFront),
            None
        );
        // The extra budget (3 pieces: none) is spent.
        assert_eq!(seed_budget(3), 4);
        assert_eq!(seed_pick(&[1, 1, 2], &nothing, SeedOrder::FromFront), None);
        // A client holding piece 0 is seeded piece 1 first.
        let mut has = HaveMap::empty(groups);
        (0..PIECE_GROUPS).for_each(|g| has.set(g));
        assert_eq!(seed_pick(&[0; 3], &has, SeedOrder::FromFront), Some(1));
    }

    #[test]
    fn a_client_alone_is_seeded_growing_runs_and_a_crowd_single_pieces() {
        assert_eq!(seed_run_len(0, true), 1);
        assert_eq!(seed_run_len(5, true), 6);
        assert_eq!(seed_run_len(1000, true), SEED_RUN_ALONE);
        assert_eq!(seed_run_len(1000, false), 1);
        let groups = 8 * PIECE_GROUPS;
        let mut has = HaveMap::empty(groups);
        // Piece 5 held: a run from 2 stops before it.
        (5 * PIECE_GROUPS..6 * PIECE_GROUPS).for_each(|g| has.set(g));
        let sent = [0u8; 8];
        assert_eq!(seed_run(&sent, &has, 2, 64), 5);
        assert_eq!(seed_run(&sent, &has, 2, 2), 4);
        assert_eq!(seed_run(&sent, &has, 6, 64), 8, "to the end");
        // A piece seeded already ends it too.
        let sent = [0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(seed_run(&sent, &has, 0, 64), 3);
    }

    fn state(done: bool, in_flight: u32, holders: u32) -> PieceState {
        PieceState {
            done,
            in_flight,
            holders,
        }
    }

    #[test]
    fn rarest_first_ties_rotated_by_the_seed() {
        let p = [state(false, 0, 3), state(false, 0, 1), state(false, 0, 1)];
        assert_eq!(pick(&p, |_| true, 0, 3), Pick::Fresh(1));
        assert_eq!(pick(&p, |_| true, 2, 3), Pick::Fresh(2));
        // Only what the source holds.
        assert_eq!(pick(&p, |i| i == 0, 0, 3), Pick::Fresh(0));
        // Held by every source: in order, whatever the seed.
        let p = [state(false, 0, 2), state(false, 0, 2), state(false, 0, 2)];
        assert_eq!(pick(&p, |_| true, 2, 2), Pick::Fresh(0));
    }

    #[test]
    fn end_game_duplicates_only_when_everything_left_is_in_flight() {
        // One piece nobody fetches yet, held elsewhere: this source waits
        // rather than duplicate.
        let p = [state(true, 0, 2), state(false, 1, 2), state(false, 0, 1)];
        assert_eq!(pick(&p, |i| i != 2, 0, 2), Pick::Wait);
        // Everything left is in flight: duplicate, least duplicated first.
        let p = [state(false, 2, 2), state(false, 1, 2), state(true, 0, 2)];
        assert_eq!(pick(&p, |_| true, 0, 2), Pick::Duplicate(1));
        // At most MAX_DUPLICATES sources per piece.
        let p = [state(false, MAX_DUPLICATES, 2), state(true, 0, 1)];
        assert_eq!(pick(&p, |_| true, 0, 2), Pick::Wait);
        let p = [state(true, 0, 2)];
        assert_eq!(pick(&p, |_| true, 0, 2), Pick::Finished);
    }

    #[test]
    fn a_run_grows_over_fresh_held_pieces_only() {
        let p = [
            state(false, 0, 1),
            state(false, 0, 1),
            state(false, 1, 1),
            state(false, 0, 1),
        ];
        assert_eq!(extend_run(&p, |_| true, 0, 8), 2);
        assert_eq!(extend_run(&p, |_| true, 0, 1), 1);
        assert_eq!(extend_run(&p, |i| i != 1, 0, 8), 1);
        assert_eq!(extend_run(&p, |_| true, 3, 8), 4);
    }

    #[test]
    fn have_maps_are_exact_and_bounded() {
        let mut m = HaveMap::empty(10);
        assert_eq!(m.as_bytes().len(), 2);
        m.set(0);
        m.set(9);
        m.set(10); // past the end: ignored
        assert!(m.has(0) && m.has(9) && !m.has(10) && !m.has(5));
        assert_eq!(m.count(), 2);
        assert_eq!(HaveMap::from_bytes(10, m.as_bytes()).unwrap(), m);
        assert!(matches!(
            HaveMap::from_bytes(10, &[0xff]),
            Err(HaveMapError::WrongLength { .. })
        ));
        assert_eq!(
            HaveMap::from_bytes(10, &[0, 0b100]),
            Err(HaveMapError::PastTheEnd)
        );
        assert!(HaveMap::full(17).is_complete());
        // Two and a half pieces.
        let groups = 2 * PIECE_GROUPS + PIECE_GROUPS / 2;
        let full = HaveMap::full(groups);
        assert!(full.has_piece(0) && full.has_piece(2));
        assert!(!HaveMap::empty(groups).has_piece(0));
        assert_eq!(piece_count(groups), 3);
        assert_eq!(piece_groups(groups, 2), (2 * PIECE_GROUPS, groups));
    }

    #[test]
    fn ranges_a_partial_holder_serves_are_whole_groups() {
        let size = 3 * GROUP + 100;
        assert_eq!(range_groups(size, (0, GROUP - 1)), Some((0, 1)));
        assert_eq!(range_groups(size, (GROUP, size - 1)), Some((1, 4)));
        assert_eq!(range_groups(size, (1, GROUP - 1)), None);
        assert_eq!(range_groups(size, (0, GROUP)), None);
        assert_eq!(range_groups(size, (0, size)), None);
    }
}
