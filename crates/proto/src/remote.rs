//! Shared plumbing of the remote (gRPC) service clients: lazy channels and
//! unary calls with a deadline that map a failed status back to the domain
//! error it carried.

use std::future::Future;
use std::time::Duration;

use natter_types::{Error, Result, UserId};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::{DecodeError, error_from_status};

/// A channel to `uri` that connects on first use and reconnects by itself,
/// so a role may start before its peer. `field` names the setting in errors.
pub fn lazy_channel(uri: &str, timeout: Duration, field: &str) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| Error::bad_request(field, format!("invalid uri {uri:?}: {e}")))?
        .connect_timeout(timeout);
    Ok(endpoint.connect_lazy())
}

/// The `authorization` value that proves a caller holds the cluster's API
/// key (roles check it like the backend API does).
pub fn bearer(api_key: &str) -> Result<AsciiMetadataValue> {
    format!("Bearer {api_key}").parse().map_err(|_| Error::bad_request("auth.api_key", "must be printable ASCII"))
}

/// A request carrying its deadline as `grpc-timeout`, so the role stops too,
/// and the caller's credentials if it has any.
pub fn request<T>(message: T, timeout: Duration, auth: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    if let Some(auth) = auth {
        request.metadata_mut().insert("authorization", auth.clone());
    }
    request
}

/// Awaits one call, enforcing the deadline here as well in case the role
/// does not answer at all (UNAVAILABLE, naming `role`).
pub async fn unary<Res>(
    role: &str,
    timeout: Duration,
    call: impl Future<Output = std::result::Result<Response<Res>, Status>>,
) -> Result<Res> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(error_from_status(&status)),
        Err(_) => Err(Error::unavailable(format!("the {role} role did not answer within {} ms", timeout.as_millis()))),
    }
}

/// Decodes a wire value into its domain type (validating it).
pub fn decode<T, W>(wire: W) -> Result<T>
where
    T: TryFrom<W, Error = DecodeError>,
{
    T::try_from(wire).map_err(Error::from)
}

pub fn user_strings(users: &[UserId]) -> Vec<String> {
    users.iter().map(ToString::to_string).collect()
}
