//! Following a node's long work to its end, for tests: the request that
//! starts a repair, full sync, decommission or rebuild answers at once
//! with the operation ([`ResponseBody::Started`]); [`finished`] asks for
//! it by id until it has ended.

use std::future::Future;
use std::time::Duration;

use isthmus_client::ClientError;
use isthmus_client::wire::{
    OperationInfo, OperationState, OperationsRequest, RequestBody, ResponseBody,
};

/// How a followed operation went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// The request that should have started it answered something else
    /// (an error, for example [`isthmus_client::wire::ErrorCode::Overloaded`]).
    #[error("not started: {0}")]
    NotStarted(String),
    /// Asking for it failed.
    #[error("asking for operation {id}: {reason}")]
    Lost {
        /// The operation.
        id: u64,
        /// What the call said.
        reason: String,
    },
    /// It was still running at the limit.
    #[error("operation {id} still running after {limit:?}")]
    TooLong {
        /// The operation.
        id: u64,
        /// How long the test waited.
        limit: Duration,
    },
}

/// Follow the operation `started` announced, through `call` (one request
/// to the node that runs it), every 100 ms, until it has ended (whatever
/// its state) or `limit` has passed.
pub async fn finished<F, Fut>(
    mut call: F,
    started: Result<ResponseBody, ClientError>,
    limit: Duration,
) -> Result<OperationInfo, FollowError>
where
    F: FnMut(RequestBody) -> Fut,
    Fut: Future<Output = Result<ResponseBody, ClientError>>,
{
    let id = match started {
        Ok(ResponseBody::Started(info)) => info.id,
        other => return Err(FollowError::NotStarted(format!("{other:?}"))),
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match call(RequestBody::Operations(OperationsRequest::Get { id })).await {
            Ok(ResponseBody::Operation(info)) if info.state != OperationState::Running => {
                return Ok(info);
            }
            Ok(ResponseBody::Operation(_)) => {}
            other => {
                return Err(FollowError::Lost {
                    id,
                    reason: format!("{other:?}"),
                });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FollowError::TooLong { id, limit });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
