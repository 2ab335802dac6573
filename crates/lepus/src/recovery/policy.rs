//! When and how often a lost connection is reconnected.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::topology::TopologyEntity;

/// A filter over the entities recovery declares again; see [`RecoveryPolicy::filter`].
pub type TopologyFilter = Arc<dyn Fn(&TopologyEntity<'_>) -> bool + Send + Sync>;

/// Whether and how a connection recovers after losing its broker; set with
/// [`ConnectionOptions::recovery`](crate::ConnectionOptions::recovery).
///
/// On by default. After a loss that reconnecting can mend (see
/// [`ConnectionError::is_recoverable`](crate::ConnectionError::is_recoverable) for the table),
/// lepus waits, reconnects to the next broker of the list, opens the same channel ids with
/// their state, declares the recorded topology again and re-subscribes the consumers; the
/// handles the application holds go on working. [`lepus::manual`](crate::manual) has the
/// whole story.
///
/// The wait before each attempt grows exponentially with jitter: attempt `n` (from 0) waits a
/// uniformly drawn time between half and all of `min(initial_delay * 2^n, max_delay)`, so with
/// the defaults the first attempt comes 125–250 ms after the loss and later ones at most 10 s
/// apart. It retries forever unless [`max_attempts`](Self::max_attempts) or
/// [`max_elapsed`](Self::max_elapsed) says otherwise.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lepus::{ConnectionOptions, RecoveryPolicy};
///
/// let mut policy = RecoveryPolicy::new();
/// policy
///     .max_delay(Duration::from_secs(30))
///     .max_elapsed(Some(Duration::from_secs(300)))
///     .retry_initial_connect(true);
/// let mut options = ConnectionOptions::from_uri("amqp://rabbit-1;amqp://rabbit-2")?;
/// options.recovery(policy);
/// # Ok::<(), lepus::Error>(())
/// ```
#[derive(Clone)]
pub struct RecoveryPolicy {
    pub(crate) enabled: bool,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_elapsed: Option<Duration>,
    pub(crate) retry_initial_connect: bool,
    pub(crate) filter: Option<TopologyFilter>,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RecoveryPolicy {
    /// Recovery on: first attempt after 125–250 ms, waits doubling up to 10 s, forever; the
    /// initial connect is not retried; every recorded entity is recovered.
    pub fn new() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
            max_elapsed: None,
            retry_initial_connect: false,
            filter: None,
        }
    }

    /// No recovery: a lost connection fails every handle at once, with the error that ended
    /// it.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new()
        }
    }

    /// Whether recovery is on.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The wait before the first attempt, doubled for each later one (default 250 ms).
    pub fn initial_delay(&mut self, delay: Duration) -> &mut Self {
        self.initial_delay = delay;
        self
    }

    /// The longest wait between attempts (default 10 s).
    pub fn max_delay(&mut self, delay: Duration) -> &mut Self {
        self.max_delay = delay;
        self
    }

    /// Gives up after this many attempts (default: never).
    pub fn max_attempts(&mut self, attempts: Option<u32>) -> &mut Self {
        self.max_attempts = attempts;
        self
    }

    /// Gives up once this long has passed since the loss (default: never).
    pub fn max_elapsed(&mut self, elapsed: Option<Duration>) -> &mut Self {
        self.max_elapsed = elapsed;
        self
    }

    /// Also retries [`Connection::connect`](crate::Connection::connect) under this policy
    /// while no broker can be reached (default: off; connect then fails after trying each
    /// broker once). A refusal (bad credentials, unknown vhost) is not retried.
    pub fn retry_initial_connect(&mut self, retry: bool) -> &mut Self {
        self.retry_initial_connect = retry;
        self
    }

    /// Recovers only the entities for which `filter` returns `true` (default: all).
    ///
    /// # Examples
    ///
    /// ```
    /// use lepus::{RecoveryPolicy, TopologyEntity};
    ///
    /// let mut policy = RecoveryPolicy::new();
    /// // Temporary reply queues are not worth declaring again.
    /// policy.filter(|entity| !matches!(entity, TopologyEntity::Queue { name, .. } if name.starts_with("reply.")));
    /// ```
    pub fn filter(
        &mut self,
        filter: impl Fn(&TopologyEntity<'_>) -> bool + Send + Sync + 'static,
    ) -> &mut Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Whether recovery declares `entity` again.
    pub(crate) fn keeps(&self, entity: &TopologyEntity<'_>) -> bool {
        self.filter.as_ref().is_none_or(|f| f(entity))
    }

    /// The wait before attempt `attempt` (from 0), drawn with `unit`, a uniform number in
    /// `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let factor = 2f64.powi(attempt.min(62) as i32);
        let base = self
            .initial_delay
            .mul_f64(factor.min(1e9))
            .min(self.max_delay);
        base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Whether to give up before attempt `attempt` (from 0), `elapsed` after the loss.
    pub(crate) fn exhausted(&self, attempt: u32, elapsed: Duration) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
            || self.max_elapsed.is_some_and(|max| elapsed >= max)
    }
}

impl fmt::Debug for RecoveryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryPolicy")
            .field("enabled", &self.enabled)
            .field("initial_delay", &self.initial_delay)
            .field("max_delay", &self.max_delay)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("retry_initial_connect", &self.retry_initial_connect)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_cap() {
        let policy = RecoveryPolicy::new();
        let ms = |d: Duration| d.as_millis();
        // The lowest and highest draw of each attempt.
        let bounds: Vec<(u128, u128)> = (0..8)
            .map(|n| (ms(policy.delay(n, 0.0)), ms(policy.delay(n, 0.999_999))))
            .collect();
        assert_eq!(
            bounds,
            [
                (125, 249),
                (250, 499),
                (500, 999),
                (1000, 1999),
                (2000, 3999),
                (4000, 7999),
                (5000, 9999),
                (5000, 9999)
            ]
        );
        // Huge attempt numbers neither overflow nor pass the cap.
        assert_eq!(policy.delay(u32::MAX, 1.0), Duration::from_secs(10));
        // Draws in between land in between.
        let mid = policy.delay(2, 0.5);
        assert_eq!(mid, Duration::from_millis(750));
    }

    #[test]
    fn limits_on_attempts_and_time_are_optional() {
        let mut policy = RecoveryPolicy::new();
        assert!(!policy.exhausted(1_000_000, Duration::from_secs(86_400)));
        policy.max_attempts(Some(3));
        assert!(!policy.exhausted(2, Duration::ZERO));
        assert!(policy.exhausted(3, Duration::ZERO));
        policy
            .max_attempts(None)
            .max_elapsed(Some(Duration::from_secs(5)));
        assert!(!policy.exhausted(50, Duration::from_secs(4)));
        assert!(policy.exhausted(0, Duration::from_secs(5)));
        assert!(!RecoveryPolicy::disabled().is_enabled());
    }

    #[test]
    fn the_filter_decides_what_comes_back() {
        let mut policy = RecoveryPolicy::new();
        let queue = |name| TopologyEntity::Queue {
            name,
            server_named: false,
        };
        assert!(policy.keeps(&queue("reply.1")));
        policy.filter(
            |e| !matches!(e, TopologyEntity::Queue { name, .. } if name.starts_with("reply.")),
        );
        assert!(!policy.keeps(&queue("reply.1")));
        assert!(policy.keeps(&queue("jobs")));
        assert!(policy.keeps(&TopologyEntity::Exchange("reply.x")));
    }
}
