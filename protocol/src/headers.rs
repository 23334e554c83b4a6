//! Header names used on the wire (lowercase, as HTTP/2 and `http::HeaderName` want).

/// RFC 9530 digest of the request or stored archive: `sha-256=:<base64>:`.
pub const CONTENT_DIGEST: &str = "content-digest";
/// The episode's code stamp, which must equal `code_version.commit` in its `meta.json`.
pub const LABSHIP_COMMIT: &str = "x-labship-commit";
/// Content type of an archive body.
pub const ARCHIVE_CONTENT_TYPE: &str = "application/zstd";
