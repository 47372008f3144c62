//! The per-core heartbeat wheel: one coarse timer per core instead of one
//! timer per connection. Each tick visits the connections due in its slot:
//! pings the ones due a ping, closes the ones silent past the idle timeout,
//! and ends the ones whose closing handshake outlived its grace.

use std::rc::{Rc, Weak};

use bytes::Bytes;

use crate::limits::{TICK_MS, WHEEL_SLOTS};
use crate::session::channel::{Channel, ChannelState};
use crate::session::disconnect::DisconnectReason;

/// Ticks a closing connection gets to finish the close handshake.
pub const CLOSE_GRACE_TICKS: u32 = 3;

/// Heartbeat periods, in ticks.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    pub ping_ticks: u32,
    pub idle_ticks: u32,
}

/// What one tick did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub pinged: u32,
    pub idle_closed: u32,
    pub killed: u32,
    /// Closed with 4003: their token expired.
    pub expired: u32,
}

/// A hashed timing wheel of weak channel references.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Weak<Channel>>>,
}

impl Default for Wheel {
    fn default() -> Self {
        Self {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
        }
    }
}

/// Ticks from `unix_s` until `expires_at_s` (at least one).
fn ticks_until(expires_at_s: u32, unix_s: u32) -> u32 {
    let ms = u64::from(expires_at_s.saturating_sub(unix_s)) * 1000;
    u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX).max(1)
}

fn slot_of(tick: u32) -> usize {
    tick as usize & (WHEEL_SLOTS - 1)
}

impl Wheel {
    /// Schedules `channel` to be visited `after` ticks from `now` (at least
    /// one; a delay past the wheel's turn is re-checked and re-queued).
    pub fn schedule(&mut self, channel: &Rc<Channel>, now: u32, after: u32) {
        let after = after.clamp(1, WHEEL_SLOTS as u32 - 1);
        self.slots[slot_of(now.wrapping_add(after))].push(Rc::downgrade(channel));
    }

    /// Schedules a new connection's first visit: its first ping, or its
    /// token's expiry if that comes first.
    pub fn add(&mut self, channel: &Rc<Channel>, now: u32, periods: Periods, unix_s: u32) {
        let first = periods
            .ping_ticks
            .min(ticks_until(channel.expires_at_s, unix_s));
        self.schedule(channel, now, first);
    }

    /// Visits the connections due at `now` (`unix_s`: the wall clock, for
    /// token expiry).
    pub fn tick(&mut self, now: u32, periods: Periods, ping: &Bytes, unix_s: u32) -> TickReport {
        let mut report = TickReport::default();
        let due = std::mem::take(&mut self.slots[slot_of(now)]);
        for weak in &due {
            let Some(channel) = weak.upgrade() else {
                continue;
            };
            match channel.state() {
                ChannelState::Dead(_) => {}
                ChannelState::Closing { since_tick, .. } => {
                    if now.wrapping_sub(since_tick) >= CLOSE_GRACE_TICKS {
                        channel.kill(DisconnectReason::IdleTimeout);
                        report.killed += 1;
                    } else {
                        self.schedule(&channel, now, 1);
                    }
                }
                ChannelState::Open => {
                    if channel.expires_at_s <= unix_s {
                        channel.close(DisconnectReason::TokenExpired, now, false);
                        report.expired += 1;
                        self.schedule(&channel, now, 1);
                        continue;
                    }
                    let silent = now.wrapping_sub(channel.last_seen_tick.get());
                    if silent >= periods.idle_ticks {
                        channel.close(DisconnectReason::IdleTimeout, now, false);
                        report.idle_closed += 1;
                        self.schedule(&channel, now, 1);
                        continue;
                    }
                    let since_ping = now.wrapping_sub(channel.last_ping_tick.get());
                    if since_ping >= periods.ping_ticks {
                        channel.send_ping(ping);
                        channel.last_ping_tick.set(now);
                        report.pinged += 1;
                    }
                    let next_ping = periods
                        .ping_ticks
                        .saturating_sub(now.wrapping_sub(channel.last_ping_tick.get()));
                    let next_idle = periods.idle_ticks - silent;
                    let next_expiry = ticks_until(channel.expires_at_s, unix_s);
                    self.schedule(&channel, now, next_ping.min(next_idle).min(next_expiry));
                }
            }
        }
        // Reuse the slot's allocation for the next turn.
        let mut due = due;
        due.clear();
        if self.slots[slot_of(now)].is_empty() {
            self.slots[slot_of(now)] = due;
        }
        report
    }

    /// Drops the entries of connections that have ended. A wheel entry is a
    /// weak reference, which keeps the ended connection's allocation alive
    /// until its slot comes round (up to a ping interval later); under
    /// churn that adds up, so the core compacts after enough endings.
    pub fn drop_ended(&mut self) {
        for slot in &mut self.slots {
            slot.retain(|weak| weak.strong_count() > 0);
            if slot.is_empty() {
                *slot = Vec::new();
            }
        }
    }

    /// Entries held (live or stale), for tests and leak checks.
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A channel over one end of a socket pair (both ends are returned so
    /// the pair stays open for the test).
    fn channel(tick: u32) -> (Rc<Channel>, UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let channel = Rc::new(Channel::new(
            1,
            ours.as_raw_fd(),
            Rc::from("u"),
            Default::default(),
            0,
            tick,
        ));
        (channel, ours, theirs)
    }

    const PERIODS: Periods = Periods {
        ping_ticks: 5,
        idle_ticks: 12,
    };

    fn run(wheel: &mut Wheel, from: u32, to: u32) -> TickReport {
        let ping = Bytes::from_static(&[0x89, 0]);
        let mut total = TickReport::default();
        for t in from..=to {
            let r = wheel.tick(t, PERIODS, &ping, 0);
            total.pinged += r.pinged;
            total.idle_closed += r.idle_closed;
            total.killed += r.killed;
        }
        total
    }

    #[test]
    fn silent_connection_is_pinged_then_closed_then_killed() {
        let mut wheel = Wheel::default();
        let (c, _ours, _theirs) = channel(0);
        wheel.schedule(&c, 0, PERIODS.ping_ticks);
        let report = run(&mut wheel, 1, 11);
        assert_eq!(report.pinged, 2);
        assert!(c.is_open());
        let report = run(&mut wheel, 12, 12);
        assert_eq!(report.idle_closed, 1);
        assert!(matches!(c.state(), ChannelState::Closing { .. }));
        run(&mut wheel, 13, 20);
        assert!(matches!(c.state(), ChannelState::Dead(_)));
    }

    #[test]
    fn active_connection_stays_open() {
        let mut wheel = Wheel::default();
        let (c, _ours, _theirs) = channel(0);
        wheel.schedule(&c, 0, PERIODS.ping_ticks);
        for t in 1..200 {
            c.last_seen_tick.set(t);
            run(&mut wheel, t, t);
        }
        assert!(c.is_open());
    }

    #[test]
    fn ended_channels_are_compacted_away() {
        let mut wheel = Wheel::default();
        let (kept, _a, _b) = channel(0);
        wheel.schedule(&kept, 0, 10);
        for _ in 0..100 {
            let (ended, _c, _d) = channel(0);
            wheel.schedule(&ended, 0, 10);
        }
        assert_eq!(wheel.len(), 101);
        wheel.drop_ended();
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn dropped_channels_leave_the_wheel() {
        let mut wheel = Wheel::default();
        let (c, _ours, _theirs) = channel(0);
        wheel.schedule(&c, 0, 1);
        drop(c);
        run(&mut wheel, 1, 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_connection_is_closed_with_4003_when_its_token_expires() {
        const START_S: u32 = 1_700_000_000;
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut channel =
            Channel::new(1, ours.as_raw_fd(), Rc::from("u"), Default::default(), 0, 0);
        channel.expires_at_s = START_S + 3;
        let c = Rc::new(channel);
        let mut wheel = Wheel::default();
        wheel.add(&c, 0, PERIODS, START_S);
        let ping = Bytes::from_static(&[0x89, 0]);
        let mut expired = 0;
        for t in 1..=2 {
            c.last_seen_tick.set(t);
            expired += wheel.tick(t, PERIODS, &ping, START_S + t).expired;
        }
        assert!(c.is_open(), "not before its exp");
        for t in 3..=4 {
            c.last_seen_tick.set(t);
            expired += wheel.tick(t, PERIODS, &ping, START_S + t).expired;
        }
        assert_eq!(expired, 1);
        assert_eq!(
            c.state(),
            ChannelState::Closing {
                reason: DisconnectReason::TokenExpired,
                since_tick: 3
            },
            "closed at the tick of its exp, not at the next ping"
        );
        assert_eq!(DisconnectReason::TokenExpired.close_code() as u16, 4003);
    }
}
