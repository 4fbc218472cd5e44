//! Queries over live records: equality and range filters on top-level fields,
//! sorting and limits. Pure; the same JSON shape serves the Rust, JavaScript
//! and HTTP APIs:
//!
//! ```json
//! { "prefix": "user:",
//!   "where": { "status": "active", "age": { "$gte": 18, "$lt": 65 },
//!              "role": { "$in": ["admin", "owner"] }, "deletedAt": { "$exists": false } },
//!   "sort": ["-age", "name"],
//!   "limit": 20 }
//! ```
//!
//! Comparison rules: numbers compare numerically (`1 == 1.0`), strings by
//! UTF-8 bytes, booleans `false < true`. A range operator only matches values
//! of its operand's type (`{"$gt": 5}` never matches a string). Sorting puts
//! missing fields first, then `null < booleans < numbers < strings < arrays <
//! objects`; ties are broken by id.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::crdt::Document;
use crate::error::InputError;

/// A comparison in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Equal to the value.
    Eq(Value),
    /// Not equal (a missing field is not equal).
    Ne(Value),
    /// Greater than.
    Gt(Value),
    /// Greater than or equal.
    Gte(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Lte(Value),
    /// Equal to one of the values.
    In(Vec<Value>),
    /// The field is present (`true`) or absent (`false`).
    Exists(bool),
}

/// One filter: a top-level field and a condition on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The top-level field name.
    pub field: String,
    /// The condition its value must meet.
    pub condition: Condition,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The top-level field name.
    pub field: String,
    /// Largest first when true.
    pub descending: bool,
}

/// A query: all filters must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Only ids starting with this prefix.
    pub prefix: String,
    /// Conditions, all of which must hold.
    pub filters: Vec<Filter>,
    /// Sort keys, most significant first; id order when empty.
    pub sort: Vec<SortKey>,
    /// At most this many results.
    pub limit: Option<usize>,
}

/// The most values one `$in` may list: a scan compares each with every
/// record, so the cost of a query stays bounded by this, not by the size
/// of the request.
pub const MAX_IN_OPERANDS: usize = 10_000;

fn invalid(message: impl Into<String>) -> InputError {
    InputError::InvalidArgument(message.into())
}

impl Query {
    /// Parses the JSON query shape (see the module docs).
    pub fn from_json(value: &Value) -> Result<Self, InputError> {
        let object = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(object) => object,
            other => {
                return Err(invalid(format!(
                    "a query is an object like {{\"where\": {{...}}, \"sort\": \"field\", \"limit\": 10}}, got {other}"
                )))
            }
        };
        let mut query = Query::default();
        for (key, value) in object {
            match key.as_str() {
                "prefix" => {
                    query.prefix = value
                        .as_str()
                        .ok_or_else(|| invalid("query `prefix` must be a string"))?
                        .to_owned();
                }
                "where" => query.filters = parse_where(value)?,
                "sort" => query.sort = parse_sort(value)?,
                "limit" => {
                    let limit = value
                        .as_u64()
                        .ok_or_else(|| invalid("query `limit` must be a non-negative integer"))?;
                    query.limit = Some(usize::try_from(limit).unwrap_or(usize::MAX));
                }
                other => {
                    return Err(invalid(format!(
                        "unknown query key `{other}` (use prefix, where, sort, limit)"
                    )))
                }
            }
        }
        Ok(query)
    }

    /// True when `document` matches every filter.
    pub fn matches(&self, document: &Value) -> bool {
        let fields = document.as_object();
        self.filters.iter().all(|filter| {
            let value = fields.and_then(|f| f.get(&filter.field));
            filter.condition.holds(value)
        })
    }

    /// True when `document` matches every filter (parsing only the fields
    /// the filters read).
    pub fn matches_document(&self, document: &Document) -> bool {
        self.filters.is_empty()
            || self.matches(&top_level_fields(document.as_str(), &|field| {
                self.filters.iter().any(|filter| filter.field == field)
            }))
    }

    /// Runs the query over `(id, document)` pairs in id order.
    pub fn run<'a>(
        &self,
        records: impl Iterator<Item = (&'a str, &'a Document)>,
    ) -> Vec<(String, Document)> {
        let mut records = records;
        self.run_records(&mut records, true)
    }

    /// Runs the query over `(id, document)` pairs, in id order when
    /// `in_id_order` (else the hits are put in id order). One function for
    /// every source of records (a scan, an index): each instance of a
    /// generic one adds code to the browser build.
    pub(crate) fn run_records<'a>(
        &self,
        records: &mut dyn Iterator<Item = (&'a str, &'a Document)>,
        in_id_order: bool,
    ) -> Vec<(String, Document)> {
        let mut hits: Vec<(&'a str, &'a Document, Option<Value>)> = Vec::new();
        let read = |field: &str| {
            self.filters.iter().any(|filter| filter.field == field)
                || self.sort.iter().any(|key| key.field == field)
        };
        for (id, document) in records {
            if !id.starts_with(self.prefix.as_str()) {
                continue;
            }
            if self.filters.is_empty() && self.sort.is_empty() && in_id_order {
                hits.push((id, document, None));
                if self.limit.is_some_and(|limit| hits.len() >= limit) {
                    break;
                }
                continue;
            }
            let value = top_level_fields(document.as_str(), &read);
            if self.matches(&value) {
                hits.push((id, document, Some(value)));
            }
        }
        if !self.sort.is_empty() || !in_id_order {
            hits.sort_by(|(id_a, _, a), (id_b, _, b)| {
                let (Some(a), Some(b)) = (a, b) else {
                    return id_a.cmp(id_b);
                };
                for key in &self.sort {
                    let field_a = a.as_object().and_then(|o| o.get(&key.field));
                    let field_b = b.as_object().and_then(|o| o.get(&key.field));
                    let order = compare_optional(field_a, field_b);
                    let order = if key.descending {
                        order.reverse()
                    } else {
                        order
                    };
                    if order != Ordering::Equal {
                        return order;
                    }
                }
                id_a.cmp(id_b)
            });
        }
        if let Some(limit) = self.limit {
            hits.truncate(limit);
        }
        hits.into_iter()
            .map(|(id, document, _)| (id.to_owned(), document.clone()))
            .collect()
    }
}

/// The top-level fields of a document's JSON text that `wanted` picks, as
/// an object holding only them (`null` for a document that is not an object): what
/// filters and sort keys read, parsed without the rest, so a long body is
/// skipped over rather than copied.
pub(crate) fn top_level_fields(text: &str, wanted: &dyn Fn(&str) -> bool) -> Value {
    struct Fields<'f>(&'f dyn Fn(&str) -> bool);

    impl<'de> serde::de::Visitor<'de> for Fields<'_> {
        type Value = Value;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut kept = Map::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if (self.0)(&key) {
                    kept.insert(key.into_owned(), map.next_value()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Value::Object(kept))
        }
    }

    if !text.starts_with('{') {
        return Value::Null;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // The text was produced by serde_json or checked when it was stored.
    serde::Deserializer::deserialize_map(&mut deserializer, Fields(wanted)).unwrap_or(Value::Null)
}

fn parse_where(value: &Value) -> Result<Vec<Filter>, InputError> {
    let object = value
        .as_object()
        .ok_or_else(|| invalid("query `where` must be an object of field conditions"))?;
    let mut filters = Vec::new();
    for (field, condition) in object {
        match condition {
            Value::Object(operators) if is_operator_object(operators) => {
                for (operator, operand) in operators {
                    filters.push(Filter {
                        field: field.clone(),
                        condition: parse_operator(field, operator, operand)?,
                    });
                }
            }
            value => filters.push(Filter {
                field: field.clone(),
                condition: Condition::Eq(value.clone()),
            }),
        }
    }
    Ok(filters)
}

fn is_operator_object(object: &Map<String, Value>) -> bool {
    !object.is_empty() && object.keys().all(|key| key.starts_with('$'))
}

fn parse_operator(field: &str, operator: &str, operand: &Value) -> Result<Condition, InputError> {
    let range_operand = || -> Result<Value, InputError> {
        match operand {
            Value::Number(_) | Value::String(_) | Value::Bool(_) => Ok(operand.clone()),
            _ => Err(invalid(format!(
                "`{operator}` on `{field}` needs a number, string or boolean"
            ))),
        }
    };
    Ok(match operator {
        "$eq" => Condition::Eq(operand.clone()),
        "$ne" => Condition::Ne(operand.clone()),
        "$gt" => Condition::Gt(range_operand()?),
        "$gte" => Condition::Gte(range_operand()?),
        "$lt" => Condition::Lt(range_operand()?),
        "$lte" => Condition::Lte(range_operand()?),
        "$in" => {
            let operands = operand
                .as_array()
                .ok_or_else(|| invalid(format!("`$in` on `{field}` needs an array")))?;
            // A scan checks every operand against every record.
            if operands.len() > MAX_IN_OPERANDS {
                return Err(invalid(format!(
                    "`$in` on `{field}` has {} values; at most {MAX_IN_OPERANDS} are allowed",
                    operands.len()
                )));
            }
            Condition::In(operands.clone())
        }
        "$exists" => Condition::Exists(
            operand
                .as_bool()
                .ok_or_else(|| invalid(format!("`$exists` on `{field}` needs true or false")))?,
        ),
        other => {
            return Err(invalid(format!(
                "unknown operator `{other}` on `{field}` (use $eq, $ne, $gt, $gte, $lt, $lte, $in, $exists)"
            )))
        }
    })
}

fn parse_sort(value: &Value) -> Result<Vec<SortKey>, InputError> {
    let parse_one = |value: &Value| -> Result<SortKey, InputError> {
        match value {
            Value::String(text) => Ok(match text.strip_prefix('-') {
                Some(field) => SortKey {
                    field: field.to_owned(),
                    descending: true,
                },
                None => SortKey {
                    field: text.clone(),
                    descending: false,
                },
            }),
            Value::Object(object) => {
                let field = object
                    .get("field")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("a sort object needs a string `field`"))?;
                let descending = match object.get("order").and_then(Value::as_str) {
                    None | Some("asc") => false,
                    Some("desc") => true,
                    Some(other) => {
                        return Err(invalid(format!(
                            "sort order `{other}` is neither \"asc\" nor \"desc\""
                        )))
                    }
                };
                Ok(SortKey {
                    field: field.to_owned(),
                    descending,
                })
            }
            _ => Err(invalid(
                "sort keys are \"field\", \"-field\" or {\"field\": ..., \"order\": \"asc\"|\"desc\"}",
            )),
        }
    };
    match value {
        Value::Array(keys) => keys.iter().map(parse_one).collect(),
        one => Ok(vec![parse_one(one)?]),
    }
}

impl Condition {
    fn holds(&self, value: Option<&Value>) -> bool {
        match self {
            Condition::Exists(wanted) => value.is_some() == *wanted,
            Condition::Eq(operand) => value.is_some_and(|v| json_equal(v, operand)),
            Condition::Ne(operand) => !value.is_some_and(|v| json_equal(v, operand)),
            Condition::In(operands) => {
                value.is_some_and(|v| operands.iter().any(|o| json_equal(v, o)))
            }
            Condition::Gt(operand) => range(value, operand, |o| o == Ordering::Greater),
            Condition::Gte(operand) => range(value, operand, |o| o != Ordering::Less),
            Condition::Lt(operand) => range(value, operand, |o| o == Ordering::Less),
            Condition::Lte(operand) => range(value, operand, |o| o != Ordering::Greater),
        }
    }
}

fn range(value: Option<&Value>, operand: &Value, accept: impl Fn(Ordering) -> bool) -> bool {
    match value {
        Some(value) if type_rank(value) == type_rank(operand) => {
            accept(compare_values(value, operand))
        }
        _ => false,
    }
}

fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

fn json_equal(a: &Value, b: &Value) -> bool {
    compare_values(a, b) == Ordering::Equal
}

fn compare_optional(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => compare_values(a, b),
    }
}

/// A total order over JSON values (see the module docs).
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => {
                let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                a.total_cmp(&b)
            }
        },
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Array(a), Value::Array(b)) => {
            for (x, y) in a.iter().zip(b) {
                let order = compare_values(x, y);
                if order != Ordering::Equal {
                    return order;
                }
            }
            a.len().cmp(&b.len())
        }
        (Value::Object(a), Value::Object(b)) => {
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                let order = ka.cmp(kb).then_with(|| compare_values(va, vb));
                if order != Ordering::Equal {
                    return order;
                }
            }
            a.len().cmp(&b.len())
        }
        _ => type_rank(a).cmp(&type_rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn docs(values: &[(&str, Value)]) -> Vec<(String, Document)> {
        values
            .iter()
            .map(|(id, v)| (id.to_string(), Document::from_value(v).unwrap()))
            .collect()
    }

    fn run(query: Value, data: &[(String, Document)]) -> Vec<String> {
        let query = Query::from_json(&query).unwrap();
        query
            .run(data.iter().map(|(id, d)| (id.as_str(), d)))
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn filters_sort_and_limit() {
        let data = docs(&[
            ("u:1", json!({"name": "Ann", "age": 31, "role": "admin"})),
            ("u:2", json!({"name": "Bob", "age": 17})),
            ("u:3", json!({"name": "Cid", "age": 45.5, "role": "user"})),
            ("u:4", json!({"name": "Dee", "age": "unknown"})),
            ("x:1", json!({"name": "Eve", "age": 50})),
            ("u:5", json!([1, 2])),
        ]);
        assert_eq!(
            run(
                json!({"prefix": "u:", "where": {"age": {"$gte": 18}}}),
                &data
            ),
            ["u:1", "u:3"]
        );
        assert_eq!(
            run(
                json!({"where": {"age": {"$gt": 17, "$lt": 46}}, "sort": "-age"}),
                &data
            ),
            ["u:3", "u:1"]
        );
        assert_eq!(
            run(
                json!({"where": {"role": {"$in": ["admin", "owner"]}}}),
                &data
            ),
            ["u:1"]
        );
        assert_eq!(
            run(
                json!({"prefix": "u:", "where": {"role": {"$exists": false}}}),
                &data
            ),
            ["u:2", "u:4", "u:5"]
        );
        assert_eq!(
            run(
                json!({"prefix": "u:", "where": {"role": {"$ne": "admin"}}, "limit": 2}),
                &data
            ),
            ["u:2", "u:3"]
        );
        assert_eq!(run(json!({"where": {"age": 31.0}}), &data), ["u:1"]);
        assert_eq!(
            run(json!({"prefix": "u:", "sort": ["age", "name"]}), &data),
            ["u:5", "u:2", "u:1", "u:3", "u:4"]
        );
        assert_eq!(run(json!({"limit": 1}), &data), ["u:1"]);
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        for bad in [
            json!([1]),
            json!({"where": 3}),
            json!({"where": {"a": {"$near": 1}}}),
            json!({"where": {"a": {"$gt": [1]}}}),
            json!({"where": {"a": {"$in": 1}}}),
            json!({"sort": 4}),
            json!({"sort": {"field": "a", "order": "up"}}),
            json!({"limit": -1}),
            json!({"select": ["a"]}),
        ] {
            assert!(Query::from_json(&bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn only_the_fields_read_are_parsed_and_the_rest_is_skipped() {
        let text = r#"{"a\"b":1,"body":"long \"text\" {not a field}","n":[1,{"x":2}],"o":{"n":3},"s":"x"}"#;
        assert_eq!(
            top_level_fields(text, &|key| ["a\"b", "n", "s", "missing"].contains(&key)),
            json!({"a\"b": 1, "n": [1, {"x": 2}], "s": "x"})
        );
        // Fields of nested objects are not top-level fields.
        assert_eq!(top_level_fields(text, &|key| key == "x"), json!({}));
        for not_an_object in ["[1,2]", "3", "\"s\"", "null"] {
            assert_eq!(top_level_fields(not_an_object, &|_| true), Value::Null);
        }
        // Queries read the same through it: a filter on an escaped key, a
        // sort on a field after a long one.
        let data = docs(&[
            (
                "k:1",
                json!({"a\"b": 2, "body": "x".repeat(10_000), "z": 1}),
            ),
            ("k:2", json!({"a\"b": 1, "body": "y", "z": 2})),
            ("k:3", json!({"a\"b": 1, "body": "z", "z": 0})),
        ]);
        assert_eq!(
            run(json!({"where": {"a\"b": 1}, "sort": "-z"}), &data),
            ["k:2", "k:3"]
        );
    }
}
