//! Draining a host of a farm (`POST /api/drain?over=SECONDS`): new upgrades are refused with
//! 503 and `/healthz` answers 503, so the load balancer marks the host down and sends new
//! clients elsewhere; then the host's clients are closed (1001, as the admin API's close),
//! one after another, spread evenly over the period, so that their reconnections reach the
//! other hosts as a trickle, not a herd. `DELETE /api/drain` ends it: the clients not closed
//! yet stay, and upgrades are taken again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Shared;

/// The longest period a drain may be spread over.
pub const MAX_OVER: Duration = Duration::from_secs(3600);

/// The period of `over=SECONDS` in a request's query (`None`: no query): 0 (close every
/// client at once) when not given.
pub fn parse_over(query: Option<&str>) -> Result<Duration, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|p| p.strip_prefix("over="))
    else {
        return Ok(Duration::ZERO);
    };
    let over = crate::config::parse_duration(value)?;
    if over > MAX_OVER {
        return Err(format!("over={value}: at most {} s", MAX_OVER.as_secs()));
    }
    Ok(over)
}

/// Starts draining: refuses upgrades from now on and closes every open client over `over`;
/// how many clients will be closed.
pub async fn start(shared: &Arc<Shared>, over: Duration) -> Result<usize, String> {
    shared.draining.store(true, Ordering::Relaxed);
    let mut ids = Vec::new();
    let mut networks = vec![shared.default_net.clone()];
    networks.extend(shared.networks.all());
    for net in &networks {
        ids.extend(super::api::clients(shared, net).await?.iter().map(|c| c.id));
    }
    let count = ids.len();
    log::info!(
        "draining: upgrades refused (503), /healthz 503, {count} client(s) to close over {} s",
        over.as_secs()
    );
    tokio::spawn(close_over(shared.clone(), ids, over));
    Ok(count)
}

/// Ends a drain: upgrades are taken again, and clients not closed yet stay.
pub fn stop(shared: &Shared) -> bool {
    let was = shared.draining.swap(false, Ordering::Relaxed);
    if was {
        log::info!("drain ended: upgrades taken again");
    }
    was
}

/// Closes `ids` one after another, evenly over `over`, while the drain lasts.
async fn close_over(shared: Arc<Shared>, ids: Vec<u64>, over: Duration) {
    let Ok(count) = u32::try_from(ids.len()) else {
        return;
    };
    let gap = over.checked_div(count).unwrap_or_default();
    let mut closed = 0usize;
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        if !shared.draining.load(Ordering::Relaxed) {
            log::info!("drain ended after closing {closed} client(s)");
            return;
        }
        // A client gone meanwhile is not an error; a core that does not answer is logged.
        match super::api::close(&shared, id).await {
            Ok(true) => closed += 1,
            Ok(false) => {}
            Err(why) => log::warn!("draining: client {id}: {why}"),
        }
    }
    log::info!(
        "drained: closed {closed} client(s); upgrades are still refused until DELETE /api/drain"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over() {
        assert_eq!(parse_over(None), Ok(Duration::ZERO));
        assert_eq!(parse_over(Some("x=1")), Ok(Duration::ZERO));
        assert_eq!(parse_over(Some("over=30")), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_over(Some("a=b&over=2m")),
            Ok(Duration::from_secs(120))
        );
        assert!(parse_over(Some("over=2h")).is_err());
        assert!(parse_over(Some("over=soon")).is_err());
    }

    #[test]
    fn a_drain_ends_once() {
        let shared = Shared::for_tests(1);
        assert!(!stop(&shared), "not draining");
        shared.draining.store(true, Ordering::Relaxed);
        assert!(stop(&shared));
        assert!(!shared.draining.load(Ordering::Relaxed));
        assert!(!stop(&shared));
    }
}
