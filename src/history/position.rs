//! Stream positions: what a client holds to resume (`pos`, `since`).
//!
//! A push is sequenced by the core that accepted it (its *origin*: one
//! executor of one process, named by the process's random incarnation and
//! the core index). Pushes of one origin reach every core in that origin's
//! order; pushes of different origins have no order between them. So a
//! position is a vector `{origin -> seq}`: "every push of origin O with
//! seq <= pos[O] that was for me, I have". It is compact text:
//! `<entry>_<entry>...`, one entry per origin, `<incarnation>.<core>.<seq>`
//! in lowercase base 36 (URL- and JSON-safe, no escaping), sorted by origin.

use std::fmt::Write as _;

/// Origins one position may name; more is malformed (bounds what a client
/// can make a node parse and compare).
pub const POSITION_ORIGINS_MAX: usize = 64;

/// Longest position text accepted: per origin at most 8 digits of
/// incarnation, 4 of core, 13 of seq and 3 separators.
pub const POSITION_BYTES_MAX: usize = POSITION_ORIGINS_MAX * 28;

/// Incarnations are random numbers below this (8 base-36 digits at most).
pub const INCARNATION_MAX: u64 = 1 << 40;

/// Seqs stay below this (a core at a million pushes a second for 35 years).
pub const SEQ_MAX: u64 = 1 << 60;

/// One sequencing executor: a process incarnation and one of its cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// Random per process start: a restarted node is a new origin.
    pub incarnation: u64,
    pub core: u16,
}

impl Origin {
    /// A fresh incarnation for this process.
    pub fn random_incarnation() -> u64 {
        rand::random::<u64>() % INCARNATION_MAX
    }
}

/// Why a position could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("position longer than {POSITION_BYTES_MAX} bytes")]
    TooLong,
    #[error("position names more than {POSITION_ORIGINS_MAX} origins")]
    TooManyOrigins,
    #[error("position entry is not <incarnation>.<core>.<seq> in base 36")]
    BadEntry,
    #[error("position names an origin twice")]
    Duplicate,
}

/// A vector of per-origin sequence numbers, sorted by origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    entries: Vec<(Origin, u64)>,
}

impl Position {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence for `origin`, 0 (nothing seen) when absent.
    pub fn get(&self, origin: Origin) -> u64 {
        match self.entries.binary_search_by_key(&origin, |(o, _)| *o) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    pub fn contains(&self, origin: Origin) -> bool {
        self.entries
            .binary_search_by_key(&origin, |(o, _)| *o)
            .is_ok()
    }

    /// Sets `origin` to `seq`.
    pub fn set(&mut self, origin: Origin, seq: u64) {
        match self.entries.binary_search_by_key(&origin, |(o, _)| *o) {
            Ok(i) => self.entries[i].1 = seq,
            Err(i) => self.entries.insert(i, (origin, seq)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Origin, u64)> + '_ {
        self.entries.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The text form (`pos` in frames, `since` in the URL).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.entries.len() * 16);
        for (i, (origin, seq)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push('_');
            }
            push_base36(&mut out, origin.incarnation);
            out.push('.');
            push_base36(&mut out, u64::from(origin.core));
            out.push('.');
            push_base36(&mut out, *seq);
        }
        out
    }

    /// Reads a position; anything not produced by [`Position::encode`]
    /// within the caps is an error. The empty string is the empty position.
    pub fn parse(text: &str) -> Result<Self, PositionError> {
        if text.len() > POSITION_BYTES_MAX {
            return Err(PositionError::TooLong);
        }
        let mut position = Position::new();
        if text.is_empty() {
            return Ok(position);
        }
        for (count, entry) in text.split('_').enumerate() {
            if count >= POSITION_ORIGINS_MAX {
                return Err(PositionError::TooManyOrigins);
            }
            let mut fields = entry.split('.');
            let (Some(inc), Some(core), Some(seq), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(PositionError::BadEntry);
            };
            let incarnation = parse_base36(inc).ok_or(PositionError::BadEntry)?;
            let core = parse_base36(core)
                .and_then(|c| u16::try_from(c).ok())
                .ok_or(PositionError::BadEntry)?;
            let seq = parse_base36(seq).ok_or(PositionError::BadEntry)?;
            if incarnation >= INCARNATION_MAX {
                return Err(PositionError::BadEntry);
            }
            let origin = Origin { incarnation, core };
            if position.contains(origin) {
                return Err(PositionError::Duplicate);
            }
            position.set(origin, seq);
        }
        Ok(position)
    }
}

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn push_base36(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 13];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    let _ = out.write_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Canonical base 36: lowercase digits, no leading zero (except "0").
fn parse_base36(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 13 || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    let mut n: u64 = 0;
    for byte in text.bytes() {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'z' => byte - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(incarnation: u64, core: u16) -> Origin {
        Origin { incarnation, core }
    }

    #[test]
    fn round_trips_and_is_sorted() {
        let mut p = Position::new();
        p.set(origin(99, 1), 5);
        p.set(origin(7, 0), u64::MAX);
        p.set(origin(99, 0), 0);
        let text = p.encode();
        assert_eq!(text, "7.0.3w5e11264sgsf_2r.0.0_2r.1.5");
        assert_eq!(Position::parse(&text), Ok(p));
    }

    #[test]
    fn empty_is_the_empty_position() {
        assert_eq!(Position::parse(""), Ok(Position::new()));
        assert_eq!(Position::new().encode(), "");
    }

    #[test]
    fn absent_origin_reads_as_zero() {
        let p = Position::parse("a.0.z").unwrap();
        assert_eq!(p.get(origin(10, 0)), 35);
        assert_eq!(p.get(origin(10, 1)), 0);
        assert!(!p.contains(origin(10, 1)));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "x",
            "1.2",
            "1.2.3.4",
            "1..3",
            "A.0.1",
            "1.0.01",
            "1.0.-1",
            "1.0.1_",
            "_1.0.1",
            "1.0.1 ",
            "1.zzzz.1",           // core above u16
            "zzzzzzzzzzzzzz.0.1", // 14 digits
            "1.0.3w5e11264sgsg",  // u64 overflow
            "zzzzzzzz.0.1",       // incarnation over 40 bits
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Position::parse("1.0.1_1.0.2"),
            Err(PositionError::Duplicate)
        );
    }

    #[test]
    fn refuses_too_big() {
        let many: Vec<String> = (0..=POSITION_ORIGINS_MAX)
            .map(|i| format!("1.{i:x}.1"))
            .collect();
        assert_eq!(
            Position::parse(&many.join("_")),
            Err(PositionError::TooManyOrigins)
        );
        assert_eq!(
            Position::parse(&"1".repeat(POSITION_BYTES_MAX + 1)),
            Err(PositionError::TooLong)
        );
    }

    #[test]
    fn largest_valid_position_fits_the_cap() {
        let mut p = Position::new();
        for core in 0..POSITION_ORIGINS_MAX as u16 {
            p.set(origin(INCARNATION_MAX - 1, core + 1000), u64::MAX);
        }
        let text = p.encode();
        assert!(text.len() <= POSITION_BYTES_MAX, "{}", text.len());
        assert_eq!(Position::parse(&text), Ok(p));
    }
}
