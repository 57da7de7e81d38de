//! The writes feed: each pod announces who wrote, so a caller's next read on any pod goes
//! to the primary until the replica has their write (see `crate::reads`).
//!
//! An announcement is published after the write commits and before its response leaves,
//! so by the time the caller can send another request, Redis has handed it to every
//! subscribed pod; what remains is the subscriber reading its socket, which is bounded by
//! the caller's own round trip to the next pod. A pod whose subscription is down routes
//! signed-in reads to the primary; on subscribing again it cannot know what it missed, so
//! it treats every caller as having written just then.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::AsyncCommands;
use uuid::Uuid;

use crate::kv::{Connection, Kv};
use crate::metrics::Metrics;
use crate::reads::Routing;
use crate::subscription::Followed;

pub const CHANNEL: &str = "stoa:writes";

/// Publishes `user`'s write.
pub async fn announce(mut conn: Connection, user: Uuid) -> redis::RedisResult<()> {
    let mut buffer = Uuid::encode_buffer();
    let id = user.hyphenated().encode_lower(&mut buffer);
    conn.publish(CHANNEL, &*id).await
}

impl Followed for Routing {
    const NAME: &'static str = "writes feed";
    const WHILE_DOWN: &'static str = "signed-in reads go to the primary";

    fn is_live(&self) -> bool {
        self.feed_live.load(Ordering::Acquire)
    }

    fn set_live(&self, live: bool, metrics: &Metrics) {
        // Announcements may have been missed until now.
        self.anyone_may_have_written();
        self.feed_live.store(live, Ordering::Release);
        metrics.set_dependency_up("writes_feed", live);
    }
}

/// Follows the writes channel for as long as the process runs.
pub fn spawn(routing: Arc<Routing>, kv: Arc<Kv>) {
    let metrics = routing.metrics.clone();
    crate::subscription::keep_following(
        routing.clone(),
        metrics,
        || false,
        Some(kv.moves()),
        move || {
            let (routing, kv) = (routing.clone(), kv.clone());
            async move { follow(&routing, &kv).await }
        },
    );
}

async fn follow(routing: &Routing, kv: &Kv) -> anyhow::Result<()> {
    let subscribed = async {
        routing.set_live(true, &routing.metrics);
        Ok(())
    };
    crate::subscription::follow_redis_channel(
        kv,
        CHANNEL,
        subscribed,
        |payload| {
            let user = std::str::from_utf8(payload)
                .ok()
                .and_then(|text| Uuid::parse_str(text).ok());
            match user {
                Some(user) => routing.mark(user),
                // Unreadable: it could have been anyone's.
                None => routing.anyone_may_have_written(),
            }
        },
        || {},
    )
    .await
}
