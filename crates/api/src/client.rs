//! What every remote (gRPC) service client shares: lazy channels and
//! [`RoleClient`], unary calls with a deadline and the API key that map a
//! failed status back to the domain error it carried.

use std::future::Future;
use std::time::Duration;

use natter_proto::error_from_status;
use natter_types::{Error, Result};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// A channel to `uri` that connects on first use and reconnects by itself,
/// so a role may start before its peer. `field` names the setting in errors.
pub fn lazy_channel(uri: &str, timeout: Duration, field: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| Error::bad_request(field, format!("invalid uri {uri:?}: {e}")))?
        .connect_timeout(timeout);
    Ok(endpoint.connect_lazy())
}

/// A generated tonic client of one role with what every call to it needs:
/// the deadline (sent as `grpc-timeout` so the role stops too, and enforced
/// here in case the role does not answer at all) and the cluster's API key.
/// Cheap to clone (tonic clients share their channel).
#[derive(Clone)]
pub struct RoleClient<C> {
    client: C,
    role: &'static str,
    timeout: Duration,
    auth: Option<AsciiMetadataValue>,
}

impl<C: Clone> RoleClient<C> {
    /// `role` names the peer in errors.
    pub fn new(client: C, role: &'static str, timeout: Duration) -> Self {
        Self { client, role, timeout, auth: None }
    }

    /// Sends the cluster's API key with every call (roles check it like the
    /// backend API does).
    pub fn with_api_key(mut self, api_key: &str) -> Result<Self> {
        let value = format!("Bearer {api_key}")
            .parse()
            .map_err(|_| Error::bad_request("auth.api_key", "must be printable ASCII"))?;
        self.auth = Some(value);
        Ok(self)
    }

    /// One unary call; a failed status becomes the domain error it carried,
    /// a missed deadline UNAVAILABLE naming the role.
    pub async fn call<Req, Res, F, Fut>(&self, message: Req, f: F) -> Result<Res>
    where
        F: FnOnce(C, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Res>, Status>>,
    {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        match tokio::time::timeout(self.timeout, f(self.client.clone(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(error_from_status(&status)),
            Err(_) => Err(Error::unavailable(format!(
                "the {} role did not answer within {} ms",
                self.role,
                self.timeout.as_millis()
            ))),
        }
    }
}
