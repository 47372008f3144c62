//! How long an HTTP connection may hold one of its core's slots, with no
//! sockets: a [`ConnClock`] records a connection's activity (bytes in and
//! out, requests started and answered) and [`ConnClock::verdict`] says, for
//! a `now` passed in, whether to keep waiting, close it, or let it finish
//! what is in flight and close.
//!
//! The rules (DESIGN section 4, issue 10 item 5):
//! - a request in flight (handed to the API, not yet answered) is never cut;
//! - a request head must arrive whole within `header_timeout` of its first
//!   byte (or of the accept, for a connection's first request);
//! - otherwise, a connection silent for `idle` (no byte in or out) is
//!   closed, between requests or inside a head; the idle clock restarts
//!   with every byte, so a slow response that still moves is not cut;
//! - at `age_max` or after `requests_max` requests the connection is closed
//!   once its request in flight is answered, so a client that keeps a
//!   connection busy (`GET /healthz` every 50 s) cannot pin a slot forever.
//!
//! hyper 1.x has `header_read_timeout`, but it needs a `Send + Sync` timer
//! and glommio's is neither; keep-alive and the close after the last request
//! use hyper's own mechanisms (`Connection: close`, `graceful_shutdown`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::config::{HttpConfig, LimitsConfig};

/// How often the watchdog looks again while a request is in flight: when
/// the request ends, the idle and header deadlines are applied at most this
/// late.
pub const IN_FLIGHT_RECHECK_MS: u64 = 1_000;

/// The time limits of one HTTP connection, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    pub header_timeout: Duration,
    pub idle: Duration,
    pub age_max: Duration,
    pub requests_max: u32,
}

impl SlotLimits {
    pub fn from_config(http: &HttpConfig, limits: &LimitsConfig) -> Self {
        Self {
            header_timeout: Duration::from_millis(http.header_timeout_ms),
            idle: Duration::from_millis(limits.http_idle_timeout_ms),
            age_max: Duration::from_millis(http.connection_age_max_ms),
            requests_max: http.requests_per_connection_max,
        }
    }
}

/// Why the watchdog ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A request head did not arrive whole within `header_timeout`.
    HeaderTimeout,
    /// No byte moved for `idle` between requests.
    Idle,
}

/// What the watchdog does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing due before this instant.
    WaitUntil(Instant),
    /// Close now.
    Close(CloseReason),
    /// Answer what is in flight, then close (no further request).
    Retire,
}

/// The activity of one connection; shared by its I/O wrapper, its service
/// and its watchdog, all on one core.
#[derive(Debug)]
pub struct ConnClock {
    accepted: Instant,
    last_byte: Cell<Instant>,
    /// First byte of a request head not yet complete (or the accept).
    head_started: Cell<Option<Instant>>,
    in_flight: Cell<u32>,
    requests: Cell<u32>,
}

impl ConnClock {
    pub fn new(now: Instant) -> Self {
        Self {
            accepted: now,
            last_byte: Cell::new(now),
            head_started: Cell::new(Some(now)),
            in_flight: Cell::new(0),
            requests: Cell::new(0),
        }
    }

    /// Bytes arrived from the client.
    pub fn on_read(&self, now: Instant) {
        self.last_byte.set(now);
        if self.in_flight.get() == 0 && self.head_started.get().is_none() {
            self.head_started.set(Some(now));
        }
    }

    /// Bytes went out to the client.
    pub fn on_write(&self, now: Instant) {
        self.last_byte.set(now);
    }

    /// A request head is complete and handed to the API. Returns whether
    /// this request must be the connection's last (requests or age cap):
    /// its answer then carries `Connection: close`.
    pub fn on_request(&self, now: Instant, limits: &SlotLimits) -> bool {
        self.head_started.set(None);
        self.in_flight.set(self.in_flight.get() + 1);
        let n = self.requests.get().saturating_add(1);
        self.requests.set(n);
        n >= limits.requests_max || now >= self.accepted + limits.age_max
    }

    /// The API answered (or the request was dropped). Body bytes read while
    /// it was in flight do not start a new head.
    pub fn on_answered(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        if self.in_flight.get() == 0 {
            self.head_started.set(None);
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.get() > 0
    }

    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// What to do at `now`. `retiring`: a retire was already asked for, so
    /// the age and request caps are not reported again.
    pub fn verdict(&self, now: Instant, limits: &SlotLimits, retiring: bool) -> Verdict {
        let age_due = self.accepted + limits.age_max;
        if !retiring && (now >= age_due || self.requests.get() >= limits.requests_max) {
            return Verdict::Retire;
        }
        if self.in_flight() {
            let recheck = now + Duration::from_millis(IN_FLIGHT_RECHECK_MS);
            return Verdict::WaitUntil(if retiring {
                recheck
            } else {
                recheck.min(age_due)
            });
        }
        let idle_due = self.last_byte.get() + limits.idle;
        let (due, reason) = match self.head_started.get() {
            Some(started) if started + limits.header_timeout < idle_due => {
                (started + limits.header_timeout, CloseReason::HeaderTimeout)
            }
            _ => (idle_due, CloseReason::Idle),
        };
        if now >= due {
            return Verdict::Close(reason);
        }
        Verdict::WaitUntil(if retiring { due } else { due.min(age_due) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlotLimits = SlotLimits {
        header_timeout: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        age_max: Duration::from_secs(600),
        requests_max: 3,
    };

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_silent_connection_gets_the_header_timeout() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        assert_eq!(
            clock.verdict(at(t0, 1), &LIMITS, false),
            Verdict::WaitUntil(at(t0, 10))
        );
        assert_eq!(
            clock.verdict(at(t0, 10), &LIMITS, false),
            Verdict::Close(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn a_trickled_head_is_cut_at_the_header_timeout_not_the_idle_one() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        assert!(!clock.on_request(at(t0, 1), &LIMITS));
        clock.on_write(at(t0, 1));
        clock.on_answered();
        // Idle between requests: counted from the last byte.
        assert_eq!(
            clock.verdict(at(t0, 2), &LIMITS, false),
            Verdict::WaitUntil(at(t0, 61))
        );
        // A new head starts at 30 s and trickles one byte every 5 s.
        for s in [30, 35, 39] {
            clock.on_read(at(t0, s));
        }
        assert_eq!(
            clock.verdict(at(t0, 40), &LIMITS, false),
            Verdict::Close(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn a_stalled_head_is_also_cut_at_idle() {
        let t0 = Instant::now();
        let limits = SlotLimits {
            idle: Duration::from_secs(1),
            ..LIMITS
        };
        let clock = ConnClock::new(t0);
        clock.on_read(t0);
        assert_eq!(
            clock.verdict(at(t0, 1), &limits, false),
            Verdict::Close(CloseReason::Idle)
        );
    }

    #[test]
    fn idle_counts_from_the_last_byte_in_or_out() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.on_request(at(t0, 0), &LIMITS);
        clock.on_answered();
        clock.on_write(at(t0, 50));
        assert_eq!(
            clock.verdict(at(t0, 100), &LIMITS, false),
            Verdict::WaitUntil(at(t0, 110))
        );
        assert_eq!(
            clock.verdict(at(t0, 110), &LIMITS, false),
            Verdict::Close(CloseReason::Idle)
        );
    }

    #[test]
    fn a_request_in_flight_is_never_cut() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        clock.on_request(at(t0, 0), &LIMITS);
        // Body bytes and long waits on busy cores: still in flight at 500 s.
        clock.on_read(at(t0, 1));
        let v = clock.verdict(at(t0, 500), &LIMITS, false);
        assert_eq!(
            v,
            Verdict::WaitUntil(at(t0, 500) + Duration::from_millis(IN_FLIGHT_RECHECK_MS))
        );
        // Past the age cap it is retired (answered, then closed), not cut.
        assert_eq!(clock.verdict(at(t0, 600), &LIMITS, false), Verdict::Retire);
        assert!(matches!(
            clock.verdict(at(t0, 700), &LIMITS, true),
            Verdict::WaitUntil(_)
        ));
        clock.on_answered();
        // Body bytes read in flight did not open a head: idle applies.
        assert_eq!(
            clock.verdict(at(t0, 700), &LIMITS, true),
            Verdict::Close(CloseReason::Idle)
        );
    }

    #[test]
    fn polling_healthz_cannot_pin_a_slot() {
        let t0 = Instant::now();
        let limits = SlotLimits {
            requests_max: u32::MAX,
            ..LIMITS
        };
        let clock = ConnClock::new(t0);
        let mut now = t0;
        let mut last = false;
        while !last {
            clock.on_read(now);
            last = clock.on_request(now, &limits);
            clock.on_write(now);
            clock.on_answered();
            now += Duration::from_secs(50);
            if !last {
                assert_ne!(
                    clock.verdict(now, &limits, false),
                    Verdict::Close(CloseReason::Idle)
                );
            }
        }
        assert!(now <= at(t0, 650), "retired at the age cap");
        assert_eq!(clock.verdict(now, &limits, false), Verdict::Retire);
    }

    #[test]
    fn the_last_request_is_flagged() {
        let t0 = Instant::now();
        let clock = ConnClock::new(t0);
        assert!(!clock.on_request(t0, &LIMITS));
        clock.on_answered();
        assert!(!clock.on_request(t0, &LIMITS));
        clock.on_answered();
        assert!(clock.on_request(t0, &LIMITS));
        assert_eq!(clock.requests(), 3);
    }
}
