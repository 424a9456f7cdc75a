//! When to order a certificate: at start-up when there is none, at two thirds of the current
//! one's lifetime, and after a failure again with exponential backoff. Pure: every time is
//! passed in, nothing sleeps.

use std::time::{Duration, SystemTime};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Its `notBefore`.
    pub not_before: SystemTime,
    /// Its `notAfter`.
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew it: two thirds into its lifetime (day 60 of Let's Encrypt's 90, 30 days
    /// before it expires; proportionally earlier for short-lived certificates), so that a CA
    /// outage of a few days costs nothing.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }
}

/// How long to wait after failed orders: `first`, doubling per failure in a row, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 min, 2, 4, ... up to 1 h: about five failed orders in the first hour, under
    /// Let's Encrypt's limit of five failed validations per name per hour.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed orders in a row (at least one).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// The renewal schedule of one certificate.
#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: Backoff,
    /// The certificate in force, if any.
    current: Option<Validity>,
    /// Failed orders since the last success.
    failures: u32,
    /// Not before this time after a failure.
    retry_at: Option<SystemTime>,
}

impl Schedule {
    /// A schedule starting with the certificate in force (`None`: none yet, order at once).
    pub fn new(current: Option<Validity>, backoff: Backoff) -> Self {
        Self {
            backoff,
            current,
            failures: 0,
            retry_at: None,
        }
    }

    /// When the next order should start: at once (any time in the past) when there is no
    /// certificate or it is due for renewal, later than a failure's backoff in any case.
    pub fn next_order(&self, now: SystemTime) -> SystemTime {
        let due = self.current.map_or(now, |v| v.renew_at());
        match self.retry_at {
            Some(retry_at) => due.max(retry_at),
            None => due,
        }
    }

    /// How long to wait from `now` until [`Self::next_order`] (zero when it is due).
    pub fn wait(&self, now: SystemTime) -> Duration {
        self.next_order(now)
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// An order succeeded: `issued` is in force; the failure count starts again.
    pub fn succeeded(&mut self, issued: Validity) {
        self.current = Some(issued);
        self.failures = 0;
        self.retry_at = None;
    }

    /// An order failed at `now`: the certificate in force (if any) stays; returns the wait
    /// before the next try.
    pub fn failed(&mut self, now: SystemTime) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff.delay(self.failures);
        self.retry_at = Some(now + delay);
        delay
    }

    /// The certificate in force.
    pub fn current(&self) -> Option<Validity> {
        self.current
    }

    /// Failed orders since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000 + DAY * days
    }

    fn ninety_days_from(day: u32) -> Validity {
        Validity {
            not_before: at(day),
            not_after: at(day + 90),
        }
    }

    #[test]
    fn renews_two_thirds_into_the_lifetime() {
        assert_eq!(ninety_days_from(0).renew_at(), at(60));
        let short = Validity {
            not_before: at(0),
            not_after: at(0) + Duration::from_secs(30),
        };
        assert_eq!(short.renew_at(), at(0) + Duration::from_secs(20));
        // A certificate whose dates are the wrong way round is due at once.
        let odd = Validity {
            not_before: at(5),
            not_after: at(1),
        };
        assert_eq!(odd.renew_at(), at(5));
    }

    #[test]
    fn without_a_certificate_orders_at_once() {
        let schedule = Schedule::new(None, Backoff::default());
        assert_eq!(schedule.next_order(at(3)), at(3));
        assert_eq!(schedule.wait(at(3)), Duration::ZERO);
    }

    #[test]
    fn a_valid_cached_certificate_waits_for_its_renewal_time() {
        let schedule = Schedule::new(Some(ninety_days_from(0)), Backoff::default());
        assert_eq!(schedule.wait(at(10)), DAY * 50);
        assert_eq!(schedule.wait(at(60)), Duration::ZERO);
        // Past due (a process that was down for long): at once.
        assert_eq!(schedule.wait(at(89)), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_keep_the_certificate() {
        let backoff = Backoff {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        let cert = ninety_days_from(0);
        let mut schedule = Schedule::new(Some(cert), backoff);
        let now = at(60);
        let waits: Vec<u64> = (0..6).map(|_| schedule.failed(now).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 600, 600]);
        assert_eq!(schedule.failures(), 6);
        assert_eq!(schedule.current(), Some(cert));
        assert_eq!(schedule.wait(now), Duration::from_secs(600));
        // Success: the new certificate's renewal time, the count starts again.
        let renewed = ninety_days_from(60);
        schedule.succeeded(renewed);
        assert_eq!(schedule.failures(), 0);
        assert_eq!(schedule.next_order(now), at(120));
        assert_eq!(schedule.failed(at(120)), Duration::from_secs(60));
    }

    #[test]
    fn a_failure_before_the_first_certificate_delays_the_retry() {
        let mut schedule = Schedule::new(None, Backoff::default());
        assert_eq!(schedule.failed(at(0)), Duration::from_secs(60));
        assert_eq!(schedule.wait(at(0)), Duration::from_secs(60));
        assert_eq!(
            schedule.wait(at(0) + Duration::from_secs(61)),
            Duration::ZERO
        );
    }

    #[test]
    fn backoff_never_overflows() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1), Duration::from_secs(60));
        assert_eq!(backoff.delay(0), Duration::from_secs(60));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(3600));
    }
}
