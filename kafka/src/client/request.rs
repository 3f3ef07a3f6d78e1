//! What each API the client sends declares about itself (key, name, the versions this
//! client speaks), version choice, and encoding and decoding of bodies.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use super::transport::ApiVersions;
use crate::{Error, Result};

/// A request this client sends.
pub(crate) trait Api: Encodable + HeaderVersion {
    /// Its key.
    const KEY: ApiKey;
    /// Its name, for observers and errors.
    const NAME: &'static str;
    /// The oldest version this client speaks.
    const MIN: i16;
    /// The newest version this client speaks: within what kafka-protocol encodes, and
    /// below versions that would change what the client reads (topic ids for names).
    const MAX: i16;
    /// The answer.
    type Response: Decodable + HeaderVersion + ResponseErrors;
}

/// The first error code anywhere in an answer, for [`super::Observer`].
pub(crate) trait ResponseErrors {
    fn first_error(&self) -> Option<i16>;
}

/// The first non-zero code of `codes`.
pub(crate) fn first(codes: impl IntoIterator<Item = i16>) -> Option<i16> {
    codes.into_iter().find(|c| *c != 0)
}

/// The newest version of `A` that both `broker`'s `versions` and this client speak.
pub(crate) fn choose<A: Api>(versions: &ApiVersions, broker: &str) -> Result<i16> {
    let (min, max) = versions
        .range(A::KEY as i16)
        .ok_or_else(|| Error::UnsupportedApi {
            broker: broker.to_owned(),
            api: A::NAME,
        })?;
    let version = max.min(A::MAX);
    if version < min.max(A::MIN) {
        return Err(Error::NoCommonVersion {
            broker: broker.to_owned(),
            api: A::NAME,
            broker_min: min,
            broker_max: max,
            client_min: A::MIN,
            client_max: A::MAX,
        });
    }
    Ok(version)
}

pub(crate) fn encode_body<T: Encodable>(
    message: &T,
    api: &'static str,
    version: i16,
) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf, version)
        .map_err(|e| Error::Encode {
            api,
            version,
            reason: format!("{e:#}"),
        })?;
    Ok(buf.freeze())
}

/// Decodes an answer's body; bytes left after it are an error too.
pub(crate) fn decode_body<T: Decodable>(
    body: &mut Bytes,
    broker: &str,
    api: &'static str,
    version: i16,
) -> Result<T> {
    let malformed = |reason: String| Error::Malformed {
        broker: broker.to_owned(),
        reason,
    };
    let decoded =
        T::decode(body, version).map_err(|e| malformed(format!("{api} v{version}: {e:#}")))?;
    if !body.is_empty() {
        return Err(malformed(format!(
            "{api} v{version}: {} bytes after the body",
            body.len()
        )));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::MetadataRequest;

    use super::*;

    #[test]
    fn the_newest_common_version_is_chosen() {
        let v = |min, max| ApiVersions::new([(3, min, max)]);
        assert_eq!(choose::<MetadataRequest>(&v(0, 14), "b:1").unwrap(), 13);
        assert_eq!(choose::<MetadataRequest>(&v(0, 9), "b:1").unwrap(), 9);
        assert_eq!(choose::<MetadataRequest>(&v(1, 1), "b:1").unwrap(), 1);
        let fetch = ApiVersions::new([(1, 4, 18)]);
        assert_eq!(
            choose::<kafka_protocol::messages::FetchRequest>(&fetch, "b:1").unwrap(),
            12
        );
        let old = ApiVersions::new([(1, 0, 3)]);
        let err = choose::<kafka_protocol::messages::FetchRequest>(&old, "b:1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "broker 'b:1' speaks Fetch v0 to v3 and this client v4 to v12: no common version"
        );
        let err = choose::<MetadataRequest>(&ApiVersions::default(), "b:1")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "broker 'b:1' does not offer Metadata");
    }
}
