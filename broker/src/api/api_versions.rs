//! ApiVersions: the versions this broker serves, from the one table in `api`.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, api_versions_response::ApiVersion,
};

use super::advertised;

fn table(sasl: bool) -> Vec<ApiVersion> {
    advertised(sasl)
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

pub(super) fn handle(_request: &ApiVersionsRequest, sasl: bool) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(table(sasl))
}

/// The v0 answer to an ApiVersions version the broker does not serve:
/// error 35 and the supported ranges, so the client can retry lower.
pub(super) fn unsupported(sasl: bool) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(table(sasl))
}
