//! A replica's replication position, reported by the session that registered it: kept by
//! the agent for the core's leader (`crate::positions`), nothing written.

use corral_proto::SessionId;
use corral_proto::api::{ApiError, Reply};

use super::Connection;

impl Connection {
    /// Keeps a replica's position for the core's leader: only for a replica that
    /// `session`, the session the request acts in, registered.
    pub(super) fn report_position(
        &self,
        shard: &str,
        address: &str,
        position: u64,
        session: Option<SessionId>,
    ) -> Result<Reply, ApiError> {
        self.context
            .replica
            .read(|r| {
                self.context
                    .positions
                    .note(r.machine(), shard, address, position, session)
            })
            .map_err(|refused| ApiError::BadRequest(refused.to_string()))?;
        Ok(Reply::PositionReported)
    }
}
