//! The request guard: checks every length in a Kafka request against the bytes
//! that are really there, before the request reaches `kafka-protocol`.
//!
//! kafka-protocol 0.18 reserves `Vec::with_capacity(n)` for an array length `n`
//! read off the wire. A body of a dozen bytes that claims 2^31 topics makes the
//! allocator fail, and a failed allocation aborts the whole process instead of
//! returning an error. The guard walks the request along a per-version schema
//! of its fields, allocating nothing from wire lengths, and refuses any length
//! that the bytes left cannot hold. A request the guard accepts is structurally
//! sound: every length fits, and the body ends exactly where its last field does.
//!
//! The schemas below follow the request definitions of the Apache Kafka protocol
//! (`clients/src/main/resources/common/message/*Request.json`) for the versions
//! that kafka-protocol 0.18 can decode. Nullability follows kafka-protocol's field
//! types (an `Option` field accepts null in every version), since what matters
//! here is what its decoder accepts.

/// The deepest nesting of arrays and structs the guard walks into.
///
/// Each array and each struct inside the request is one level; the guarded
/// requests go four deep (Produce: topics, a topic, its partitions, a
/// partition). The bound keeps a recursive schema from recursing without end.
pub const MAX_DEPTH: usize = 16;

/// The most array elements, over all arrays, one request may hold.
///
/// kafka-protocol reserves room for every element before decoding it, so this
/// bounds the memory a request can make the decoder reserve (elements times the
/// size of a decoded element) as well as the guard's own work.
pub const MAX_ELEMENTS: u64 = 1 << 20;

/// Why the guard refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The API key is not one the guard has a schema for.
    #[error(
        "api key {api_key} is not supported: the broker serves {}",
        supported_api_keys()
    )]
    UnknownApi {
        /// The API key of the request.
        api_key: i16,
    },
    /// The API is known, but not in this version.
    #[error(
        "{api} (api key {api_key}) version {version} is not supported: versions {min} to {max} are"
    )]
    UnsupportedVersion {
        /// The API key of the request.
        api_key: i16,
        /// The API's name.
        api: &'static str,
        /// The version asked for.
        version: i16,
        /// The oldest version supported.
        min: i16,
        /// The newest version supported.
        max: i16,
    },
    /// A request header version other than 1 or 2.
    #[error("request header version {0} is not supported: versions 1 and 2 are")]
    UnsupportedHeaderVersion(i16),
    /// A field whose bytes do not fit the schema.
    #[error("{path}: {problem}")]
    Malformed {
        /// Where in the request, as `field[index].field`.
        path: String,
        /// What is wrong there.
        problem: Problem,
    },
}

/// What is wrong with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A fixed-size field, or a length prefix, cut off by the end of the body.
    #[error("needs {needed} bytes but {left} are left")]
    Truncated {
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the body.
        left: usize,
    },
    /// An array whose elements cannot all fit in the bytes left.
    #[error(
        "array length {length} exceeds the {left} bytes left (each element takes at least {min_element} bytes)"
    )]
    ArrayTooLong {
        /// The array length on the wire.
        length: u64,
        /// Bytes left in the body after the length.
        left: usize,
        /// The fewest bytes one element can take.
        min_element: u64,
    },
    /// A string, bytes field or tagged field longer than the bytes left.
    #[error("{what} length {length} exceeds the {left} bytes left")]
    TooLong {
        /// `string`, `bytes` or `tagged field`.
        what: &'static str,
        /// The length on the wire.
        length: u64,
        /// Bytes left in the body after the length.
        left: usize,
    },
    /// A negative length other than -1, which is the only one meaning null.
    #[error("{what} length {length} is negative: only -1 (null) or 0 and above are accepted")]
    NegativeLength {
        /// `string`, `bytes` or `array`.
        what: &'static str,
        /// The length on the wire.
        length: i32,
    },
    /// Null where the field cannot be null.
    #[error("null {what} where the field must hold a value")]
    Null {
        /// `string`, `bytes` or `array`.
        what: &'static str,
    },
    /// A string whose bytes are not UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
    /// An unsigned varint longer than five bytes or above `u32::MAX`.
    #[error("varint is longer than 5 bytes or larger than 4294967295")]
    BadVarint,
    /// More tagged fields than the bytes left can hold (each takes at least two).
    #[error(
        "tagged field count {count} exceeds the {left} bytes left (each takes at least 2 bytes)"
    )]
    TooManyTags {
        /// The count on the wire.
        count: u32,
        /// Bytes left in the body after the count.
        left: usize,
    },
    /// Tags out of order or repeated.
    #[error("tag {tag} follows tag {previous}: tags must be strictly ascending")]
    TagOrder {
        /// The tag read.
        tag: u32,
        /// The tag before it.
        previous: u32,
    },
    /// A known tag in a version that does not have it.
    #[error("tag {tag} ({name}) is not valid in version {version}")]
    TagNotInVersion {
        /// The tag read.
        tag: u32,
        /// The field it stands for.
        name: &'static str,
        /// The request's version.
        version: i16,
    },
    /// A known tagged field whose content is not exactly its declared size.
    #[error("tag {tag} ({name}) declares {size} bytes but its value takes {used}")]
    TagSizeMismatch {
        /// The tag read.
        tag: u32,
        /// The field it stands for.
        name: &'static str,
        /// The size on the wire.
        size: u32,
        /// The bytes its value took.
        used: usize,
    },
    /// Arrays and structs nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// More array elements in the request than [`MAX_ELEMENTS`].
    #[error("the request holds more than {MAX_ELEMENTS} array elements")]
    TooManyElements,
}

/// The APIs and version ranges the guard has schemas for, as
/// `(api key, oldest version, newest version)`.
pub fn guarded_apis() -> &'static [(i16, i16, i16)] {
    &GUARDED_APIS
}

/// The request header version that goes with `api_version` of `api_key`: 2 for
/// the flexible versions, 1 before them.
///
/// Versions newer than the guard knows count as flexible, as Kafka's
/// `flexibleVersions: "N+"` says, so that the header of a request in an
/// unsupported version can still be read to answer it with UNSUPPORTED_VERSION.
pub fn request_header_version(api_key: i16, api_version: i16) -> Result<i16, GuardError> {
    let api = find_api(api_key)?;
    Ok(if api_version >= api.flexible_since {
        2
    } else {
        1
    })
}

/// Checks a request body (the bytes after the request header) for `api_key` and
/// `api_version` before it is decoded.
pub fn check_request_body(api_key: i16, api_version: i16, body: &[u8]) -> Result<(), GuardError> {
    let api = find_api(api_key)?;
    if !api.versions.contains(api_version) {
        return Err(GuardError::UnsupportedVersion {
            api_key,
            api: api.name,
            version: api_version,
            min: api.versions.min,
            max: api.versions.max,
        });
    }
    let mut walker = Walker::new(body, api_version, api_version >= api.flexible_since);
    walker.walk_struct(api.body, 0).map_err(Fault::into_error)?;
    // Kafka ignores bytes after the last field, and current librdkafka sends
    // some (an all-topics Metadata v12 carries three); every length was
    // checked by now, so they cannot make the decoder allocate.
    let left = walker.left();
    if left > 0 {
        tracing::debug!(
            api = api.name,
            version = api_version,
            left,
            "ignoring bytes after the request's last field"
        );
    }
    Ok(())
}

/// Checks the request header at the start of `frame` (the request without its
/// four-byte size): api key, api version, correlation id, client id, and in
/// header version 2 the tagged fields. Returns the header's length, where the
/// body starts.
pub fn check_request_header(frame: &[u8], header_version: i16) -> Result<usize, GuardError> {
    if !(1..=2).contains(&header_version) {
        return Err(GuardError::UnsupportedHeaderVersion(header_version));
    }
    // The header keeps a classic (non-compact) client id even in version 2, so it
    // is walked by hand rather than as a flexible struct.
    let mut walker = Walker::new(frame, header_version, false);
    walker
        .walk_struct(&tables::REQUEST_HEADER, 0)
        .map_err(Fault::into_error)?;
    if header_version >= 2 {
        walker
            .walk_tagged_fields(&tables::REQUEST_HEADER, 0)
            .map_err(Fault::into_error)?;
    }
    Ok(walker.pos)
}

fn find_api(api_key: i16) -> Result<&'static Api, GuardError> {
    API_TABLE
        .iter()
        .find(|api| api.key == api_key)
        .ok_or(GuardError::UnknownApi { api_key })
}

fn supported_api_keys() -> String {
    let keys: Vec<String> = API_TABLE.iter().map(|api| api.key.to_string()).collect();
    keys.join(", ")
}

// ---------------------------------------------------------------------------
// The schema language.

/// The versions a field exists in, both ends inclusive.
#[derive(Debug, Clone, Copy)]
struct Versions {
    min: i16,
    max: i16,
}

impl Versions {
    const fn contains(self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }
}

const ALL: Versions = Versions {
    min: 0,
    max: i16::MAX,
};

const fn since(min: i16) -> Versions {
    Versions { min, max: i16::MAX }
}

const fn until(max: i16) -> Versions {
    Versions { min: 0, max }
}

const fn between(min: i16, max: i16) -> Versions {
    Versions { min, max }
}

/// How a field is encoded. Strings, bytes and arrays switch to their compact
/// (varint length) encodings in a message's flexible versions.
#[derive(Debug, Clone, Copy)]
enum Kind {
    I8,
    I16,
    I32,
    I64,
    Uuid,
    Bool,
    Str,
    NullableStr,
    Bytes,
    /// A record batch set: nullable bytes, whose contents the log validates.
    Records,
    Array(&'static Kind),
    NullableArray(&'static Kind),
    /// A struct inline; in flexible versions it ends with its tagged fields.
    Struct(&'static Schema),
    // Kinds of the protocol that no guarded request uses yet.
    #[allow(dead_code)]
    U16,
    #[allow(dead_code)]
    F64,
    #[allow(dead_code)]
    NullableBytes,
}

impl Kind {
    /// The fewest bytes a value of this kind takes on the wire.
    fn min_size(self, version: i16, flexible: bool) -> u64 {
        let length_prefix = |classic| if flexible { 1 } else { classic };
        match self {
            Kind::I8 | Kind::Bool => 1,
            Kind::I16 | Kind::U16 => 2,
            Kind::I32 => 4,
            Kind::I64 | Kind::F64 => 8,
            Kind::Uuid => 16,
            Kind::Str | Kind::NullableStr => length_prefix(2),
            Kind::Bytes
            | Kind::NullableBytes
            | Kind::Records
            | Kind::Array(_)
            | Kind::NullableArray(_) => length_prefix(4),
            Kind::Struct(schema) => schema.min_size(version, flexible),
        }
    }
}

/// One field of a struct, and the versions it is in.
#[derive(Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
    versions: Versions,
}

const fn field(name: &'static str, kind: Kind, versions: Versions) -> Field {
    Field {
        name,
        kind,
        versions,
    }
}

/// A tagged field that kafka-protocol decodes by type (rather than keeping its
/// bytes), so its value must be checked like any other field.
#[derive(Debug)]
struct TaggedField {
    tag: u32,
    name: &'static str,
    kind: Kind,
    versions: Versions,
}

/// A struct: its fields in wire order, and the tagged fields it knows.
#[derive(Debug)]
struct Schema {
    fields: &'static [Field],
    tagged: &'static [TaggedField],
}

const fn fields(fields: &'static [Field]) -> Schema {
    Schema {
        fields,
        tagged: &[],
    }
}

impl Schema {
    fn min_size(&self, version: i16, flexible: bool) -> u64 {
        let fields: u64 = self
            .fields
            .iter()
            .filter(|field| field.versions.contains(version))
            .map(|field| field.kind.min_size(version, flexible))
            .sum();
        fields + u64::from(flexible)
    }
}

/// A request API: its key, the versions guarded, where its flexible versions
/// start, and the schema of its body.
#[derive(Debug)]
struct Api {
    key: i16,
    name: &'static str,
    versions: Versions,
    flexible_since: i16,
    body: &'static Schema,
}

const fn api(
    key: i16,
    name: &'static str,
    versions: Versions,
    flexible_since: i16,
    body: &'static Schema,
) -> Api {
    Api {
        key,
        name,
        versions,
        flexible_since,
        body,
    }
}

static API_TABLE: [Api; tables::APIS.len()] = tables::APIS;

static GUARDED_APIS: [(i16, i16, i16); tables::APIS.len()] = api_ranges(&tables::APIS);

const fn api_ranges<const N: usize>(apis: &[Api; N]) -> [(i16, i16, i16); N] {
    let mut ranges = [(0, 0, 0); N];
    let mut i = 0;
    while i < N {
        ranges[i] = (apis[i].key, apis[i].versions.min, apis[i].versions.max);
        i += 1;
    }
    ranges
}

// ---------------------------------------------------------------------------
// The walk.

/// A refusal on its way up the walk, gathering its path as it goes.
#[derive(Debug)]
struct Fault {
    path: String,
    problem: Problem,
}

impl Fault {
    fn new(problem: Problem) -> Self {
        Fault {
            path: String::new(),
            problem,
        }
    }

    fn in_field(mut self, name: &str) -> Self {
        if !self.path.is_empty() && !self.path.starts_with('[') {
            self.path.insert(0, '.');
        }
        self.path.insert_str(0, name);
        self
    }

    fn at_index(mut self, index: u64) -> Self {
        if !self.path.is_empty() && !self.path.starts_with('[') {
            self.path.insert(0, '.');
        }
        self.path.insert_str(0, &format!("[{index}]"));
        self
    }

    fn into_error(self) -> GuardError {
        GuardError::Malformed {
            path: self.path,
            problem: self.problem,
        }
    }
}

type Step<T = ()> = Result<T, Fault>;

/// A cursor over the request that checks and skips, never keeping a value.
struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where the current region ends: the body, or a known tagged field's value.
    end: usize,
    version: i16,
    flexible: bool,
    elements: u64,
}

impl<'a> Walker<'a> {
    fn new(buf: &'a [u8], version: i16, flexible: bool) -> Self {
        Walker {
            buf,
            pos: 0,
            end: buf.len(),
            version,
            flexible,
            elements: 0,
        }
    }

    fn left(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, len: u64) -> Step<&'a [u8]> {
        let left = self.left();
        let Some(len) = usize::try_from(len).ok().filter(|&len| len <= left) else {
            return Err(Fault::new(Problem::Truncated { needed: len, left }));
        };
        let taken = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(taken)
    }

    fn take_array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N as u64)?);
        Ok(array)
    }

    /// An unsigned varint as kafka-protocol reads it, refusing the encodings
    /// it would silently truncate, so that both read the same value.
    fn varint(&mut self) -> Step<u32> {
        let mut value = 0u32;
        for shift in [0, 7, 14, 21, 28] {
            let [byte] = self.take_array::<1>()?;
            if shift == 28 && byte > 0x0f {
                return Err(Fault::new(Problem::BadVarint));
            }
            value |= u32::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Fault::new(Problem::BadVarint))
    }

    /// A length prefix: `None` for null. Compact lengths are a varint holding
    /// length + 1; classic ones are an `i16` (strings) or `i32`, -1 for null.
    fn length(&mut self, what: &'static str, classic_i16: bool) -> Step<Option<u64>> {
        if self.flexible {
            return Ok(self.varint()?.checked_sub(1).map(u64::from));
        }
        let raw = if classic_i16 {
            i32::from(i16::from_be_bytes(self.take_array()?))
        } else {
            i32::from_be_bytes(self.take_array()?)
        };
        match raw {
            -1 => Ok(None),
            length if length >= 0 => Ok(Some(length.unsigned_abs().into())),
            length => Err(Fault::new(Problem::NegativeLength { what, length })),
        }
    }

    fn present(length: Option<u64>, nullable: bool, what: &'static str) -> Step<Option<u64>> {
        match length {
            None if !nullable => Err(Fault::new(Problem::Null { what })),
            length => Ok(length),
        }
    }

    fn take_sized(&mut self, what: &'static str, length: u64) -> Step<&'a [u8]> {
        let left = self.left();
        if length > left as u64 {
            return Err(Fault::new(Problem::TooLong { what, length, left }));
        }
        self.take(length)
    }

    fn string(&mut self, nullable: bool) -> Step {
        let length = self.length("string", true)?;
        if let Some(length) = Self::present(length, nullable, "string")? {
            let bytes = self.take_sized("string", length)?;
            std::str::from_utf8(bytes).map_err(|_| Fault::new(Problem::NotUtf8))?;
        }
        Ok(())
    }

    fn bytes(&mut self, nullable: bool) -> Step {
        let length = self.length("bytes", false)?;
        if let Some(length) = Self::present(length, nullable, "bytes")? {
            self.take_sized("bytes", length)?;
        }
        Ok(())
    }

    fn array(&mut self, item: Kind, nullable: bool, depth: usize) -> Step {
        let length = self.length("array", false)?;
        let Some(length) = Self::present(length, nullable, "array")? else {
            return Ok(());
        };
        // Even an element of no bytes counts as one, so that the element count,
        // and with it the decoder's reservation, never outgrows the body.
        let min_element = item.min_size(self.version, self.flexible).max(1);
        let left = self.left();
        if length.saturating_mul(min_element) > left as u64 {
            return Err(Fault::new(Problem::ArrayTooLong {
                length,
                left,
                min_element,
            }));
        }
        self.elements += length;
        if self.elements > MAX_ELEMENTS {
            return Err(Fault::new(Problem::TooManyElements));
        }
        for index in 0..length {
            self.walk_kind(item, depth)
                .map_err(|fault| fault.at_index(index))?;
        }
        Ok(())
    }

    fn walk_kind(&mut self, kind: Kind, depth: usize) -> Step {
        match kind {
            Kind::I8 | Kind::Bool => self.take(1).map(drop),
            Kind::I16 | Kind::U16 => self.take(2).map(drop),
            Kind::I32 => self.take(4).map(drop),
            Kind::I64 | Kind::F64 => self.take(8).map(drop),
            Kind::Uuid => self.take(16).map(drop),
            Kind::Str => self.string(false),
            Kind::NullableStr => self.string(true),
            Kind::Bytes => self.bytes(false),
            Kind::NullableBytes | Kind::Records => self.bytes(true),
            Kind::Array(item) => self.array(*item, false, depth + 1),
            Kind::NullableArray(item) => self.array(*item, true, depth + 1),
            Kind::Struct(schema) => self.walk_struct(schema, depth + 1),
        }
    }

    fn walk_struct(&mut self, schema: &Schema, depth: usize) -> Step {
        if depth > MAX_DEPTH {
            return Err(Fault::new(Problem::TooDeep));
        }
        let version = self.version;
        for field in schema
            .fields
            .iter()
            .filter(|field| field.versions.contains(version))
        {
            self.walk_kind(field.kind, depth)
                .map_err(|fault| fault.in_field(field.name))?;
        }
        if self.flexible {
            self.walk_tagged_fields(schema, depth)?;
        }
        Ok(())
    }

    fn walk_tagged_fields(&mut self, schema: &Schema, depth: usize) -> Step {
        self.tagged_fields(schema, depth)
            .map_err(|fault| fault.in_field("tagged_fields"))
    }

    fn tagged_fields(&mut self, schema: &Schema, depth: usize) -> Step {
        let count = self.varint()?;
        let left = self.left();
        if u64::from(count) * 2 > left as u64 {
            return Err(Fault::new(Problem::TooManyTags { count, left }));
        }
        let mut previous = None;
        for _ in 0..count {
            let tag = self.varint()?;
            let size = self.varint()?;
            if let Some(previous) = previous.filter(|&previous| tag <= previous) {
                return Err(Fault::new(Problem::TagOrder { tag, previous }));
            }
            previous = Some(tag);
            let left = self.left();
            if u64::from(size) > left as u64 {
                return Err(Fault::new(Problem::TooLong {
                    what: "tagged field",
                    length: size.into(),
                    left,
                }));
            }
            match schema.tagged.iter().find(|known| known.tag == tag) {
                Some(known) => self.known_tagged_field(known, size, depth)?,
                None => {
                    self.take(size.into())?;
                }
            }
        }
        Ok(())
    }

    /// kafka-protocol reads a known tagged field's value from the stream by its
    /// type, ignoring the declared size, so the value must fill that size
    /// exactly for the decoder and the guard to stay at the same position.
    fn known_tagged_field(&mut self, known: &TaggedField, size: u32, depth: usize) -> Step {
        let (tag, name) = (known.tag, known.name);
        if !known.versions.contains(self.version) {
            return Err(Fault::new(Problem::TagNotInVersion {
                tag,
                name,
                version: self.version,
            }));
        }
        let start = self.pos;
        let outer_end = self.end;
        self.end = start + size as usize;
        let walked = self
            .walk_kind(known.kind, depth)
            .map_err(|fault| fault.in_field(name));
        let used = self.pos - start;
        self.end = outer_end;
        walked?;
        if used != size as usize {
            return Err(Fault::new(Problem::TagSizeMismatch {
                tag,
                name,
                size,
                used,
            }));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The requests. Field names are kafka-protocol's; versions are those in which
// kafka-protocol 0.18 reads the field.

mod tables {
    use super::Kind::{
        Array, Bool, Bytes, I8, I16, I32, I64, NullableArray, NullableStr, Records, Str, Struct,
        Uuid,
    };
    use super::{ALL, Api, Schema, TaggedField, api, between, field, fields, since, until};

    pub(super) const REQUEST_HEADER: Schema = fields(&[
        field("request_api_key", I16, ALL),
        field("request_api_version", I16, ALL),
        field("correlation_id", I32, ALL),
        field("client_id", NullableStr, ALL),
    ]);

    pub(super) const APIS: [Api; 37] = [
        api(0, "Produce", between(3, 13), 9, &PRODUCE),
        api(1, "Fetch", between(4, 18), 12, &FETCH),
        api(2, "ListOffsets", between(1, 10), 6, &LIST_OFFSETS),
        api(3, "Metadata", between(0, 13), 9, &METADATA),
        // kafka-protocol advertises OffsetCommit 10, OffsetFetch 10 and
        // InitProducerId 6, but its decoders stop at 9, 9 and 5.
        api(8, "OffsetCommit", between(2, 9), 8, &OFFSET_COMMIT),
        api(9, "OffsetFetch", between(1, 9), 6, &OFFSET_FETCH),
        api(10, "FindCoordinator", between(0, 6), 3, &FIND_COORDINATOR),
        api(11, "JoinGroup", between(0, 9), 6, &JOIN_GROUP),
        api(12, "Heartbeat", between(0, 4), 4, &HEARTBEAT),
        api(13, "LeaveGroup", between(0, 5), 4, &LEAVE_GROUP),
        api(14, "SyncGroup", between(0, 5), 4, &SYNC_GROUP),
        api(15, "DescribeGroups", between(0, 6), 5, &DESCRIBE_GROUPS),
        api(16, "ListGroups", between(0, 5), 3, &LIST_GROUPS),
        api(18, "ApiVersions", between(0, 4), 3, &API_VERSIONS),
        api(19, "CreateTopics", between(2, 7), 5, &CREATE_TOPICS),
        api(20, "DeleteTopics", between(1, 6), 4, &DELETE_TOPICS),
        api(21, "DeleteRecords", between(0, 2), 2, &DELETE_RECORDS),
        api(22, "InitProducerId", between(0, 5), 2, &INIT_PRODUCER_ID),
        api(
            24,
            "AddPartitionsToTxn",
            between(0, 5),
            3,
            &ADD_PARTITIONS_TO_TXN,
        ),
        api(25, "AddOffsetsToTxn", between(0, 4), 3, &ADD_OFFSETS_TO_TXN),
        api(26, "EndTxn", between(0, 5), 3, &END_TXN),
        api(28, "TxnOffsetCommit", between(0, 5), 3, &TXN_OFFSET_COMMIT),
        api(29, "DescribeAcls", between(1, 3), 2, &DESCRIBE_ACLS),
        api(30, "CreateAcls", between(1, 3), 2, &CREATE_ACLS),
        api(31, "DeleteAcls", between(1, 3), 2, &DELETE_ACLS),
        api(32, "DescribeConfigs", between(1, 4), 4, &DESCRIBE_CONFIGS),
        api(33, "AlterConfigs", between(0, 2), 2, &ALTER_CONFIGS),
        api(35, "DescribeLogDirs", between(1, 4), 2, &DESCRIBE_LOG_DIRS),
        api(37, "CreatePartitions", between(0, 3), 2, &CREATE_PARTITIONS),
        api(42, "DeleteGroups", between(0, 2), 2, &DELETE_GROUPS),
        api(
            44,
            "IncrementalAlterConfigs",
            between(0, 1),
            1,
            &INCREMENTAL_ALTER_CONFIGS,
        ),
        // No flexible version.
        api(47, "OffsetDelete", between(0, 0), i16::MAX, &OFFSET_DELETE),
        api(60, "DescribeCluster", between(0, 2), 0, &DESCRIBE_CLUSTER),
        api(
            65,
            "DescribeTransactions",
            between(0, 0),
            0,
            &DESCRIBE_TRANSACTIONS,
        ),
        api(66, "ListTransactions", between(0, 2), 0, &LIST_TRANSACTIONS),
        api(
            68,
            "ConsumerGroupHeartbeat",
            between(0, 1),
            0,
            &CONSUMER_GROUP_HEARTBEAT,
        ),
        api(
            69,
            "ConsumerGroupDescribe",
            between(0, 1),
            0,
            &CONSUMER_GROUP_DESCRIBE,
        ),
    ];

    const PRODUCE: Schema = fields(&[
        field("transactional_id", NullableStr, ALL),
        field("acks", I16, ALL),
        field("timeout_ms", I32, ALL),
        field("topic_data", Array(&Struct(&PRODUCE_TOPIC)), ALL),
    ]);
    const PRODUCE_TOPIC: Schema = fields(&[
        field("name", Str, until(12)),
        field("topic_id", Uuid, since(13)),
        field("partition_data", Array(&Struct(&PRODUCE_PARTITION)), ALL),
    ]);
    const PRODUCE_PARTITION: Schema =
        fields(&[field("index", I32, ALL), field("records", Records, ALL)]);

    const FETCH: Schema = Schema {
        fields: &[
            field("replica_id", I32, until(14)),
            field("max_wait_ms", I32, ALL),
            field("min_bytes", I32, ALL),
            field("max_bytes", I32, ALL),
            field("isolation_level", I8, ALL),
            field("session_id", I32, since(7)),
            field("session_epoch", I32, since(7)),
            field("topics", Array(&Struct(&FETCH_TOPIC)), ALL),
            field(
                "forgotten_topics_data",
                Array(&Struct(&FETCH_FORGOTTEN_TOPIC)),
                since(7),
            ),
            field("rack_id", Str, since(11)),
        ],
        tagged: &[
            TaggedField {
                tag: 0,
                name: "cluster_id",
                kind: NullableStr,
                versions: since(12),
            },
            TaggedField {
                tag: 1,
                name: "replica_state",
                kind: Struct(&FETCH_REPLICA_STATE),
                versions: since(15),
            },
        ],
    };
    const FETCH_TOPIC: Schema = fields(&[
        field("topic", Str, until(12)),
        field("topic_id", Uuid, since(13)),
        field("partitions", Array(&Struct(&FETCH_PARTITION)), ALL),
    ]);
    const FETCH_PARTITION: Schema = Schema {
        fields: &[
            field("partition", I32, ALL),
            field("current_leader_epoch", I32, since(9)),
            field("fetch_offset", I64, ALL),
            field("last_fetched_epoch", I32, since(12)),
            field("log_start_offset", I64, since(5)),
            field("partition_max_bytes", I32, ALL),
        ],
        tagged: &[
            TaggedField {
                tag: 0,
                name: "replica_directory_id",
                kind: Uuid,
                versions: since(17),
            },
            TaggedField {
                tag: 1,
                name: "high_watermark",
                kind: I64,
                versions: since(18),
            },
        ],
    };
    const FETCH_FORGOTTEN_TOPIC: Schema = fields(&[
        field("topic", Str, between(7, 12)),
        field("topic_id", Uuid, since(13)),
        field("partitions", Array(&I32), since(7)),
    ]);
    const FETCH_REPLICA_STATE: Schema = fields(&[
        field("replica_id", I32, since(15)),
        field("replica_epoch", I64, since(15)),
    ]);

    const LIST_OFFSETS: Schema = fields(&[
        field("replica_id", I32, ALL),
        field("isolation_level", I8, since(2)),
        field("topics", Array(&Struct(&LIST_OFFSETS_TOPIC)), ALL),
        field("timeout_ms", I32, since(10)),
    ]);
    const LIST_OFFSETS_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("partitions", Array(&Struct(&LIST_OFFSETS_PARTITION)), ALL),
    ]);
    const LIST_OFFSETS_PARTITION: Schema = fields(&[
        field("partition_index", I32, ALL),
        field("current_leader_epoch", I32, since(4)),
        field("timestamp", I64, ALL),
    ]);

    const METADATA: Schema = fields(&[
        field("topics", NullableArray(&Struct(&METADATA_TOPIC)), ALL),
        field("allow_auto_topic_creation", Bool, since(4)),
        field(
            "include_cluster_authorized_operations",
            Bool,
            between(8, 10),
        ),
        field("include_topic_authorized_operations", Bool, since(8)),
    ]);
    const METADATA_TOPIC: Schema = fields(&[
        field("topic_id", Uuid, since(10)),
        field("name", NullableStr, ALL),
    ]);

    const OFFSET_COMMIT: Schema = fields(&[
        field("group_id", Str, ALL),
        field("generation_id_or_member_epoch", I32, ALL),
        field("member_id", Str, ALL),
        field("group_instance_id", NullableStr, since(7)),
        field("retention_time_ms", I64, until(4)),
        field("topics", Array(&Struct(&OFFSET_COMMIT_TOPIC)), ALL),
    ]);
    const OFFSET_COMMIT_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("partitions", Array(&Struct(&OFFSET_COMMIT_PARTITION)), ALL),
    ]);
    const OFFSET_COMMIT_PARTITION: Schema = fields(&[
        field("partition_index", I32, ALL),
        field("committed_offset", I64, ALL),
        field("committed_leader_epoch", I32, since(6)),
        field("committed_metadata", NullableStr, ALL),
    ]);

    const OFFSET_FETCH: Schema = fields(&[
        field("group_id", Str, until(7)),
        field(
            "topics",
            NullableArray(&Struct(&OFFSET_FETCH_TOPIC)),
            until(7),
        ),
        field("groups", Array(&Struct(&OFFSET_FETCH_GROUP)), since(8)),
        field("require_stable", Bool, since(7)),
    ]);
    const OFFSET_FETCH_TOPIC: Schema = fields(&[
        field("name", Str, until(7)),
        field("partition_indexes", Array(&I32), until(7)),
    ]);
    const OFFSET_FETCH_GROUP: Schema = fields(&[
        field("group_id", Str, since(8)),
        field("member_id", NullableStr, since(9)),
        field("member_epoch", I32, since(9)),
        field(
            "topics",
            NullableArray(&Struct(&OFFSET_FETCH_GROUP_TOPIC)),
            since(8),
        ),
    ]);
    const OFFSET_FETCH_GROUP_TOPIC: Schema = fields(&[
        field("name", Str, since(8)),
        field("partition_indexes", Array(&I32), since(8)),
    ]);

    const FIND_COORDINATOR: Schema = fields(&[
        field("key", Str, until(3)),
        field("key_type", I8, since(1)),
        field("coordinator_keys", Array(&Str), since(4)),
    ]);

    const JOIN_GROUP: Schema = fields(&[
        field("group_id", Str, ALL),
        field("session_timeout_ms", I32, ALL),
        field("rebalance_timeout_ms", I32, since(1)),
        field("member_id", Str, ALL),
        field("group_instance_id", NullableStr, since(5)),
        field("protocol_type", Str, ALL),
        field("protocols", Array(&Struct(&JOIN_GROUP_PROTOCOL)), ALL),
        field("reason", NullableStr, since(8)),
    ]);
    const JOIN_GROUP_PROTOCOL: Schema =
        fields(&[field("name", Str, ALL), field("metadata", Bytes, ALL)]);

    const HEARTBEAT: Schema = fields(&[
        field("group_id", Str, ALL),
        field("generation_id", I32, ALL),
        field("member_id", Str, ALL),
        field("group_instance_id", NullableStr, since(3)),
    ]);

    const LEAVE_GROUP: Schema = fields(&[
        field("group_id", Str, ALL),
        field("member_id", Str, until(2)),
        field("members", Array(&Struct(&LEAVE_GROUP_MEMBER)), since(3)),
    ]);
    const LEAVE_GROUP_MEMBER: Schema = fields(&[
        field("member_id", Str, since(3)),
        field("group_instance_id", NullableStr, since(3)),
        field("reason", NullableStr, since(5)),
    ]);

    const SYNC_GROUP: Schema = fields(&[
        field("group_id", Str, ALL),
        field("generation_id", I32, ALL),
        field("member_id", Str, ALL),
        field("group_instance_id", NullableStr, since(3)),
        field("protocol_type", NullableStr, since(5)),
        field("protocol_name", NullableStr, since(5)),
        field("assignments", Array(&Struct(&SYNC_GROUP_ASSIGNMENT)), ALL),
    ]);
    const SYNC_GROUP_ASSIGNMENT: Schema = fields(&[
        field("member_id", Str, ALL),
        field("assignment", Bytes, ALL),
    ]);

    const DESCRIBE_GROUPS: Schema = fields(&[
        field("groups", Array(&Str), ALL),
        field("include_authorized_operations", Bool, since(3)),
    ]);

    const LIST_GROUPS: Schema = fields(&[
        field("states_filter", Array(&Str), since(4)),
        field("types_filter", Array(&Str), since(5)),
    ]);

    const API_VERSIONS: Schema = fields(&[
        field("client_software_name", Str, since(3)),
        field("client_software_version", Str, since(3)),
    ]);

    const CREATE_TOPICS: Schema = fields(&[
        field("topics", Array(&Struct(&CREATE_TOPICS_TOPIC)), ALL),
        field("timeout_ms", I32, ALL),
        field("validate_only", Bool, ALL),
    ]);
    const CREATE_TOPICS_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("num_partitions", I32, ALL),
        field("replication_factor", I16, ALL),
        field(
            "assignments",
            Array(&Struct(&CREATE_TOPICS_ASSIGNMENT)),
            ALL,
        ),
        field("configs", Array(&Struct(&CREATE_TOPICS_CONFIG)), ALL),
    ]);
    const CREATE_TOPICS_ASSIGNMENT: Schema = fields(&[
        field("partition_index", I32, ALL),
        field("broker_ids", Array(&I32), ALL),
    ]);
    const CREATE_TOPICS_CONFIG: Schema =
        fields(&[field("name", Str, ALL), field("value", NullableStr, ALL)]);

    const DELETE_TOPICS: Schema = fields(&[
        field("topics", Array(&Struct(&DELETE_TOPICS_TOPIC)), since(6)),
        field("topic_names", Array(&Str), until(5)),
        field("timeout_ms", I32, ALL),
    ]);
    const DELETE_TOPICS_TOPIC: Schema = fields(&[
        field("name", NullableStr, since(6)),
        field("topic_id", Uuid, since(6)),
    ]);

    const INIT_PRODUCER_ID: Schema = fields(&[
        field("transactional_id", NullableStr, ALL),
        field("transaction_timeout_ms", I32, ALL),
        field("producer_id", I64, since(3)),
        field("producer_epoch", I16, since(3)),
    ]);

    const DESCRIBE_CONFIGS: Schema = fields(&[
        field("resources", Array(&Struct(&DESCRIBE_CONFIGS_RESOURCE)), ALL),
        field("include_synonyms", Bool, ALL),
        field("include_documentation", Bool, since(3)),
    ]);
    const DESCRIBE_CONFIGS_RESOURCE: Schema = fields(&[
        field("resource_type", I8, ALL),
        field("resource_name", Str, ALL),
        field("configuration_keys", NullableArray(&Str), ALL),
    ]);

    const DELETE_GROUPS: Schema = fields(&[field("groups_names", Array(&Str), ALL)]);

    const ACL_FILTER: Schema = fields(&[
        field("resource_type_filter", I8, ALL),
        field("resource_name_filter", NullableStr, ALL),
        field("pattern_type_filter", I8, since(1)),
        field("principal_filter", NullableStr, ALL),
        field("host_filter", NullableStr, ALL),
        field("operation", I8, ALL),
        field("permission_type", I8, ALL),
    ]);
    const DESCRIBE_ACLS: Schema = ACL_FILTER;
    const CREATE_ACLS: Schema = fields(&[field("creations", Array(&Struct(&ACL_CREATION)), ALL)]);
    const ACL_CREATION: Schema = fields(&[
        field("resource_type", I8, ALL),
        field("resource_name", Str, ALL),
        field("resource_pattern_type", I8, since(1)),
        field("principal", Str, ALL),
        field("host", Str, ALL),
        field("operation", I8, ALL),
        field("permission_type", I8, ALL),
    ]);
    const DELETE_ACLS: Schema = fields(&[field("filters", Array(&Struct(&ACL_FILTER)), ALL)]);

    const DESCRIBE_LOG_DIRS: Schema = fields(&[field(
        "topics",
        NullableArray(&Struct(&DESCRIBE_LOG_DIRS_TOPIC)),
        ALL,
    )]);
    const DESCRIBE_LOG_DIRS_TOPIC: Schema = fields(&[
        field("topic", Str, ALL),
        field("partitions", Array(&I32), ALL),
    ]);

    const CREATE_PARTITIONS: Schema = fields(&[
        field("topics", Array(&Struct(&CREATE_PARTITIONS_TOPIC)), ALL),
        field("timeout_ms", I32, ALL),
        field("validate_only", Bool, ALL),
    ]);
    const CREATE_PARTITIONS_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("count", I32, ALL),
        field(
            "assignments",
            NullableArray(&Struct(&CREATE_PARTITIONS_ASSIGNMENT)),
            ALL,
        ),
    ]);
    const CREATE_PARTITIONS_ASSIGNMENT: Schema = fields(&[field("broker_ids", Array(&I32), ALL)]);

    const ALTER_CONFIGS: Schema = fields(&[
        field("resources", Array(&Struct(&ALTER_CONFIGS_RESOURCE)), ALL),
        field("validate_only", Bool, ALL),
    ]);
    const ALTER_CONFIGS_RESOURCE: Schema = fields(&[
        field("resource_type", I8, ALL),
        field("resource_name", Str, ALL),
        field("configs", Array(&Struct(&ALTER_CONFIGS_CONFIG)), ALL),
    ]);
    const ALTER_CONFIGS_CONFIG: Schema =
        fields(&[field("name", Str, ALL), field("value", NullableStr, ALL)]);

    const INCREMENTAL_ALTER_CONFIGS: Schema = fields(&[
        field(
            "resources",
            Array(&Struct(&INCREMENTAL_ALTER_CONFIGS_RESOURCE)),
            ALL,
        ),
        field("validate_only", Bool, ALL),
    ]);
    const INCREMENTAL_ALTER_CONFIGS_RESOURCE: Schema = fields(&[
        field("resource_type", I8, ALL),
        field("resource_name", Str, ALL),
        field(
            "configs",
            Array(&Struct(&INCREMENTAL_ALTER_CONFIGS_CONFIG)),
            ALL,
        ),
    ]);
    const INCREMENTAL_ALTER_CONFIGS_CONFIG: Schema = fields(&[
        field("name", Str, ALL),
        field("config_operation", I8, ALL),
        field("value", NullableStr, ALL),
    ]);

    const DELETE_RECORDS: Schema = fields(&[
        field("topics", Array(&Struct(&DELETE_RECORDS_TOPIC)), ALL),
        field("timeout_ms", I32, ALL),
    ]);
    const DELETE_RECORDS_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("partitions", Array(&Struct(&DELETE_RECORDS_PARTITION)), ALL),
    ]);
    const DELETE_RECORDS_PARTITION: Schema = fields(&[
        field("partition_index", I32, ALL),
        field("offset", I64, ALL),
    ]);

    const DESCRIBE_CLUSTER: Schema = fields(&[
        field("include_cluster_authorized_operations", Bool, ALL),
        field("endpoint_type", I8, since(1)),
        field("include_fenced_brokers", Bool, since(2)),
    ]);

    const OFFSET_DELETE: Schema = fields(&[
        field("group_id", Str, ALL),
        field("topics", Array(&Struct(&OFFSET_DELETE_TOPIC)), ALL),
    ]);
    const OFFSET_DELETE_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("partitions", Array(&Struct(&OFFSET_DELETE_PARTITION)), ALL),
    ]);
    const OFFSET_DELETE_PARTITION: Schema = fields(&[field("partition_index", I32, ALL)]);

    const ADD_PARTITIONS_TO_TXN: Schema = fields(&[
        field(
            "transactions",
            Array(&Struct(&ADD_PARTITIONS_TO_TXN_TRANSACTION)),
            since(4),
        ),
        field("v3_and_below_transactional_id", Str, until(3)),
        field("v3_and_below_producer_id", I64, until(3)),
        field("v3_and_below_producer_epoch", I16, until(3)),
        field(
            "v3_and_below_topics",
            Array(&Struct(&ADD_PARTITIONS_TO_TXN_TOPIC)),
            until(3),
        ),
    ]);
    const ADD_PARTITIONS_TO_TXN_TRANSACTION: Schema = fields(&[
        field("transactional_id", Str, ALL),
        field("producer_id", I64, ALL),
        field("producer_epoch", I16, ALL),
        field("verify_only", Bool, ALL),
        field("topics", Array(&Struct(&ADD_PARTITIONS_TO_TXN_TOPIC)), ALL),
    ]);
    const ADD_PARTITIONS_TO_TXN_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field("partitions", Array(&I32), ALL),
    ]);

    const ADD_OFFSETS_TO_TXN: Schema = fields(&[
        field("transactional_id", Str, ALL),
        field("producer_id", I64, ALL),
        field("producer_epoch", I16, ALL),
        field("group_id", Str, ALL),
    ]);

    const END_TXN: Schema = fields(&[
        field("transactional_id", Str, ALL),
        field("producer_id", I64, ALL),
        field("producer_epoch", I16, ALL),
        field("committed", Bool, ALL),
    ]);

    const TXN_OFFSET_COMMIT: Schema = fields(&[
        field("transactional_id", Str, ALL),
        field("group_id", Str, ALL),
        field("producer_id", I64, ALL),
        field("producer_epoch", I16, ALL),
        field("generation_id", I32, since(3)),
        field("member_id", Str, since(3)),
        field("group_instance_id", NullableStr, since(3)),
        field("topics", Array(&Struct(&TXN_OFFSET_COMMIT_TOPIC)), ALL),
    ]);
    const TXN_OFFSET_COMMIT_TOPIC: Schema = fields(&[
        field("name", Str, ALL),
        field(
            "partitions",
            Array(&Struct(&TXN_OFFSET_COMMIT_PARTITION)),
            ALL,
        ),
    ]);
    const TXN_OFFSET_COMMIT_PARTITION: Schema = fields(&[
        field("partition_index", I32, ALL),
        field("committed_offset", I64, ALL),
        field("committed_leader_epoch", I32, since(2)),
        field("committed_metadata", NullableStr, ALL),
    ]);

    const DESCRIBE_TRANSACTIONS: Schema = fields(&[field("transactional_ids", Array(&Str), ALL)]);

    const LIST_TRANSACTIONS: Schema = fields(&[
        field("state_filters", Array(&Str), ALL),
        field("producer_id_filters", Array(&I64), ALL),
        field("duration_filter", I64, since(1)),
        field("transactional_id_pattern", NullableStr, since(2)),
    ]);

    const CONSUMER_GROUP_HEARTBEAT: Schema = fields(&[
        field("group_id", Str, ALL),
        field("member_id", Str, ALL),
        field("member_epoch", I32, ALL),
        field("instance_id", NullableStr, ALL),
        field("rack_id", NullableStr, ALL),
        field("rebalance_timeout_ms", I32, ALL),
        field("subscribed_topic_names", NullableArray(&Str), ALL),
        field("subscribed_topic_regex", NullableStr, since(1)),
        field("server_assignor", NullableStr, ALL),
        field(
            "topic_partitions",
            NullableArray(&Struct(&CONSUMER_GROUP_HEARTBEAT_TOPIC)),
            ALL,
        ),
    ]);
    const CONSUMER_GROUP_HEARTBEAT_TOPIC: Schema = fields(&[
        field("topic_id", Uuid, ALL),
        field("partitions", Array(&I32), ALL),
    ]);

    const CONSUMER_GROUP_DESCRIBE: Schema = fields(&[
        field("group_ids", Array(&Str), ALL),
        field("include_authorized_operations", Bool, ALL),
    ]);
}

#[cfg(test)]
mod tests {
    use super::Kind::{Array, Struct};
    use super::*;

    fn varint(bytes: &[u8]) -> Result<u32, Problem> {
        Walker::new(bytes, 0, true)
            .varint()
            .map_err(|fault| fault.problem)
    }

    /// The body of a Fetch v12-14 request without topics, up to its tagged fields.
    fn fetch_v12_prefix() -> Vec<u8> {
        let mut body = vec![0xff; 4]; // replica_id
        body.extend([0; 12]); // max_wait_ms, min_bytes, max_bytes
        body.push(0); // isolation_level
        body.extend([0; 8]); // session_id, session_epoch
        body.extend([1, 1, 1]); // no topics, no forgotten topics, empty rack_id
        body
    }

    fn problem(result: Result<(), GuardError>) -> Problem {
        match result {
            Err(GuardError::Malformed { problem, .. }) => problem,
            other => panic!("expected a malformed field, got {other:?}"),
        }
    }

    #[test]
    fn reads_varints_as_kafka_protocol_does_and_refuses_what_it_would_truncate() {
        assert_eq!(varint(&[0x00]), Ok(0));
        assert_eq!(varint(&[0xac, 0x02]), Ok(300));
        assert_eq!(varint(&[0x80, 0x00]), Ok(0), "a padded zero is still zero");
        assert_eq!(varint(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Ok(u32::MAX));
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(Problem::BadVarint)
        );
        assert_eq!(
            varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(Problem::BadVarint)
        );
        assert_eq!(
            varint(&[0x80]),
            Err(Problem::Truncated { needed: 1, left: 0 })
        );
    }

    static NESTED: Schema = fields(&[field("children", Array(&Struct(&NESTED)), ALL)]);

    fn nested(levels: usize) -> Vec<u8> {
        let mut body = [0, 0, 0, 1].repeat(levels);
        body.extend([0, 0, 0, 0]);
        body
    }

    #[test]
    fn bounds_the_nesting_depth() {
        let walk = |body: &[u8]| {
            let mut walker = Walker::new(body, 0, false);
            walker.walk_struct(&NESTED, 0).map_err(Fault::into_error)
        };
        assert_eq!(walk(&nested(MAX_DEPTH / 2)), Ok(()));
        let err = walk(&nested(MAX_DEPTH / 2 + 1)).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: nested deeper than {MAX_DEPTH} levels",
                "children[0].".repeat(9).trim_end_matches('.')
            )
        );
    }

    #[test]
    fn refuses_bad_strings_by_name() {
        // Heartbeat v0: group_id, generation_id, member_id.
        let heartbeat = |group_id: &[u8]| {
            let mut body = group_id.to_vec();
            body.extend([0, 0, 0, 1, 0, 1, b'm']);
            check_request_body(12, 0, &body)
        };
        assert_eq!(heartbeat(&[0, 2, b'g', b'1']), Ok(()));
        assert_eq!(problem(heartbeat(&[0, 2, 0xc3, 0x28])), Problem::NotUtf8);
        assert_eq!(
            problem(heartbeat(&[0xff, 0xff])),
            Problem::Null { what: "string" }
        );
        assert_eq!(
            heartbeat(&[0xff, 0xfe]).expect_err("refused").to_string(),
            "group_id: string length -2 is negative: only -1 (null) or 0 and above are accepted"
        );
    }

    #[test]
    fn refuses_tagged_fields_out_of_order() {
        let mut body = fetch_v12_prefix();
        body.extend([2, 5, 0, 3, 0]); // tag 5, then tag 3, both empty
        assert_eq!(
            check_request_body(1, 12, &body)
                .expect_err("refused")
                .to_string(),
            "tagged_fields: tag 3 follows tag 5: tags must be strictly ascending"
        );
    }

    #[test]
    fn refuses_more_tags_than_bytes() {
        let mut body = fetch_v12_prefix();
        body.extend([100, 0, 0]);
        assert_eq!(
            problem(check_request_body(1, 12, &body)),
            Problem::TooManyTags {
                count: 100,
                left: 2
            }
        );
    }

    #[test]
    fn checks_known_tagged_fields_within_their_declared_size() {
        // cluster_id (tag 0) holding the compact string "ab" declares 3 bytes.
        let cluster_id = |size: u8, value: &[u8]| {
            let mut body = fetch_v12_prefix();
            body.extend([1, 0, size]);
            body.extend(value);
            check_request_body(1, 12, &body)
        };
        assert_eq!(cluster_id(3, &[3, b'a', b'b']), Ok(()));
        assert_eq!(cluster_id(1, &[0]), Ok(()), "a null cluster id");
        assert_eq!(
            cluster_id(4, &[3, b'a', b'b', 0])
                .expect_err("refused")
                .to_string(),
            "tagged_fields: tag 0 (cluster_id) declares 4 bytes but its value takes 3"
        );
        // The string may not reach past its tag, even where the body goes on.
        assert_eq!(
            cluster_id(2, &[3, b'a', b'b'])
                .expect_err("refused")
                .to_string(),
            "tagged_fields.cluster_id: string length 2 exceeds the 1 bytes left"
        );
        assert_eq!(
            problem(cluster_id(9, &[3, b'a', b'b'])),
            Problem::TooLong {
                what: "tagged field",
                length: 9,
                left: 3
            }
        );
    }

    #[test]
    fn refuses_a_known_tag_outside_its_versions() {
        // replica_state (tag 1) exists from Fetch v15 on; kafka-protocol refuses it before.
        let mut body = fetch_v12_prefix();
        body.extend([1, 1, 12]);
        body.extend([0; 12]);
        assert_eq!(
            problem(check_request_body(1, 14, &body)),
            Problem::TagNotInVersion {
                tag: 1,
                name: "replica_state",
                version: 14
            }
        );
    }

    #[test]
    fn counts_a_struct_of_no_bytes_as_one_byte_per_element() {
        // A non-flexible struct whose fields are all absent in this version.
        static EMPTY: Schema = fields(&[field("later", Kind::I32, since(5))]);
        static HOLDER: Schema = fields(&[field("items", Array(&Struct(&EMPTY)), ALL)]);
        let mut walker = Walker::new(&[0, 0, 0, 3, 0, 0], 0, false);
        assert_eq!(
            walker
                .walk_struct(&HOLDER, 0)
                .map_err(|fault| fault.problem),
            Err(Problem::ArrayTooLong {
                length: 3,
                left: 2,
                min_element: 1
            })
        );
    }

    #[test]
    fn lists_the_guarded_apis_from_its_tables() {
        assert_eq!(guarded_apis().len(), API_TABLE.len());
        assert_eq!(guarded_apis()[0], (0, 3, 13));
        assert_eq!(guarded_apis()[18], (24, 0, 5));
        assert_eq!(guarded_apis()[29], (42, 0, 2));
        assert_eq!(guarded_apis()[31], (47, 0, 0));
        assert_eq!(guarded_apis()[32], (60, 0, 2));
        assert_eq!(guarded_apis()[34], (66, 0, 2));
        assert_eq!(guarded_apis()[36], (69, 0, 1));
    }
}
