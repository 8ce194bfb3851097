//! The Lamport clock of the state map.

use micelio_wire::limits::MAX_LAMPORT_TS;

use crate::error::WriteError;

/// One clock for every key of a node. [`tick`](Self::tick) gives the next
/// local write its timestamp; [`witness`](Self::witness) moves the clock up
/// to a timestamp seen on an accepted entry. It never goes backwards and
/// never passes 2^62, the largest timestamp peers accept: a local write at
/// the limit is refused rather than sent where it would be rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LamportClock(u64);

impl LamportClock {
    /// A clock reading `at` (clamped to 2^62), e.g. the highest timestamp
    /// reloaded from storage.
    pub fn starting_at(at: u64) -> Self {
        Self(at.min(MAX_LAMPORT_TS))
    }

    /// The current reading: the timestamp of the last local write or the
    /// highest one witnessed.
    pub fn now(&self) -> u64 {
        self.0
    }

    /// Advances for a local write and returns its timestamp.
    ///
    /// # Errors
    /// [`WriteError::ClockExhausted`] at 2^62.
    pub fn tick(&mut self) -> Result<u64, WriteError> {
        if self.0 >= MAX_LAMPORT_TS {
            return Err(WriteError::ClockExhausted(self.0));
        }
        self.0 += 1;
        Ok(self.0)
    }

    /// Moves the clock to `max(clock, ts)` (SPEC §7), `ts` clamped to 2^62.
    pub fn witness(&mut self, ts: u64) {
        self.0 = self.0.max(ts.min(MAX_LAMPORT_TS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_witnesses_and_stops_at_the_limit() {
        let mut c = LamportClock::default();
        assert_eq!(c.tick(), Ok(1));
        c.witness(10);
        assert_eq!(c.tick(), Ok(11));
        c.witness(3);
        assert_eq!(c.now(), 11, "never backwards");
        c.witness(u64::MAX);
        assert_eq!(c.now(), MAX_LAMPORT_TS);
        assert_eq!(c.tick(), Err(WriteError::ClockExhausted(MAX_LAMPORT_TS)));
        let mut c = LamportClock::starting_at(MAX_LAMPORT_TS - 1);
        assert_eq!(c.tick(), Ok(MAX_LAMPORT_TS));
        assert!(c.tick().is_err());
    }
}
