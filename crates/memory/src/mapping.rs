//! How the port's operations (store an entry, search, list a task's entries) become tool calls
//! of a particular Memory MCP server. This is configuration (`SPARC_MEMORY_MCP_TOOLS`), not code:
//!
//! - [`ToolMapping::KnowledgeGraph`] (the default) speaks to a knowledge-graph server such as
//!   the npm `@modelcontextprotocol/server-memory`: an entry is an entity `mem:<id>` whose type
//!   is its intent and whose observations carry its content and tags (`task:<id>`,
//!   `project:<id>`, `user:<id>`, …), linked `belongs_to` its task entity. Creating an entity
//!   that exists is skipped by the server, so pushing an entry twice leaves it there once.
//!   `search_nodes` matches a whole query as a substring, so a search asks once per word and
//!   ranks entries by the share of words they match.
//! - [`ToolMapping::Tools`] speaks to a server with one tool per operation (the seed's
//!   `memory_store` / `vector_search`): each call is a tool name and an argument template, in
//!   which a string `"{{name}}"` becomes the value of that variable (any JSON) and `{{name}}`
//!   inside a longer string its text. Hits are read from the answer's array (the answer itself,
//!   or its `results`, `memories` or `matches`), each hit's entry id from `id`, `key`,
//!   `memory_id` or `metadata.memory_id`, and its score from `score`, `similarity` or
//!   `similarity_score`.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sparc_domain::memory::MemoryEntry;
use uuid::Uuid;

/// A memory entry as the server is given it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The entry's id.
    pub id: Uuid,
    /// What it says.
    pub content: String,
    /// Why it was written.
    pub intent: String,
    /// Whose it is.
    pub user_id: Uuid,
    /// The agent that wrote it.
    pub agent_id: Option<Uuid>,
    /// Its task.
    pub task_id: Option<Uuid>,
    /// Its project.
    pub project_id: Option<Uuid>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// The WHO/WHEN/PROJECT/WHY tags and the writer's own metadata.
    pub metadata: Value,
}

impl Record {
    /// The record of entry `id`, stored at `at`.
    pub fn of(id: Uuid, entry: &MemoryEntry, at: DateTime<Utc>) -> Self {
        Self {
            id,
            content: entry.content.clone(),
            intent: entry.intent.as_str().to_owned(),
            user_id: entry.user_id,
            agent_id: entry.agent_id,
            task_id: entry.task_id,
            project_id: entry.project_id,
            created_at: at,
            metadata: tags(entry, at),
        }
    }
}

/// An entry's WHO/WHEN/PROJECT/WHY tags, with the writer's own metadata beside them; WHY's
/// description is the writer's `description`, if they gave one.
pub fn tags(entry: &MemoryEntry, at: DateTime<Utc>) -> Value {
    let description = entry
        .additional_metadata
        .get("description")
        .and_then(Value::as_str);
    json!({
        "who": {"agent_id": entry.agent_id, "user_id": entry.user_id},
        "when": {
            "iso_timestamp": at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "unix_timestamp": at.timestamp(),
        },
        "project": {"project_id": entry.project_id, "task_id": entry.task_id},
        "why": {"intent": entry.intent, "description": description},
        "additional_metadata": entry.additional_metadata,
    })
}

/// A search hit: an entry and how well it matched (0..1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The entry.
    pub id: Uuid,
    /// 0..1, higher is better.
    pub score: f64,
}

/// Why a tool call gave nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No server to ask, or the connection failed (the server is down).
    #[error("memory MCP server unavailable: {0}")]
    Unavailable(String),
    /// The server answered with a tool error (`isError`): it is up, and refused the request.
    #[error("memory MCP tool error: {0}")]
    Tool(String),
    /// The server answered something that is not what the tool returns.
    #[error("memory MCP server answered malformed output: {0}")]
    Malformed(String),
}

impl CallError {
    /// Whether the error says the server is unhealthy (and so counts against the breaker).
    pub fn counts_against_the_server(&self) -> bool {
        !matches!(self, CallError::Tool(_))
    }
}

/// Calls one tool of the server and returns its result as JSON (structured content, or the
/// text content parsed as JSON).
pub trait ToolCaller: Send + Sync {
    /// Calls `tool` with `arguments` (an object).
    fn call(
        &self,
        tool: &str,
        arguments: Value,
    ) -> impl Future<Output = Result<Value, CallError>> + Send;
}

/// One tool call of a [`ToolSet`]: the tool and its argument template.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The tool's name.
    pub tool: String,
    /// The arguments, with `{{variable}}` placeholders.
    pub arguments: Value,
}

/// A server with one tool per operation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSet {
    /// Stores an entry. Variables: `id`, `content`, `intent`, `user_id`, `agent_id`, `task_id`,
    /// `project_id`, `created_at`, `metadata`.
    pub store: ToolCall,
    /// Searches. Variables: `query`, `limit`.
    pub search: ToolCall,
    /// Lists a task's entries (variable `task_id`); without it a task's entries come from the
    /// read model.
    #[serde(default)]
    pub task: Option<ToolCall>,
}

/// How the port's operations map onto the server's tools.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolMapping {
    /// A knowledge-graph server (`create_entities`, `create_relations`, `search_nodes`).
    #[default]
    KnowledgeGraph,
    /// A server with one tool per operation.
    Tools(ToolSet),
}

/// Why `SPARC_MEMORY_MCP_TOOLS` could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "SPARC_MEMORY_MCP_TOOLS must be `knowledge-graph` or a JSON object {{store, search, task?}} of {{tool, arguments}}: {0}"
)]
pub struct MappingError(String);

impl ToolMapping {
    /// Reads the setting: unset or `knowledge-graph`, else a JSON [`ToolSet`].
    pub fn parse(setting: Option<&str>) -> Result<Self, MappingError> {
        match setting.map(str::trim) {
            None | Some("") | Some("knowledge-graph") => Ok(ToolMapping::KnowledgeGraph),
            Some(json) => serde_json::from_str(json)
                .map(ToolMapping::Tools)
                .map_err(|e| MappingError(e.to_string())),
        }
    }

    /// Hands `record` to the server.
    pub async fn store(&self, caller: &impl ToolCaller, record: &Record) -> Result<(), CallError> {
        match self {
            ToolMapping::KnowledgeGraph => {
                let name = entity(record.id);
                let mut entities = vec![json!({
                    "name": name,
                    "entityType": record.intent,
                    "observations": observations(record),
                })];
                let mut relations = Vec::new();
                if let Some(task) = record.task_id {
                    entities.push(json!({"name": format!("task:{task}"), "entityType": "task", "observations": []}));
                    relations.push(json!({"from": name, "to": format!("task:{task}"), "relationType": "belongs_to"}));
                    if let Some(project) = record.project_id {
                        entities.push(json!({"name": format!("project:{project}"), "entityType": "project", "observations": []}));
                        relations.push(json!({"from": format!("task:{task}"), "to": format!("project:{project}"), "relationType": "part_of"}));
                    }
                }
                caller
                    .call("create_entities", json!({ "entities": entities }))
                    .await?;
                if !relations.is_empty() {
                    caller
                        .call("create_relations", json!({ "relations": relations }))
                        .await?;
                }
                Ok(())
            }
            ToolMapping::Tools(tools) => {
                let variables = record_variables(record);
                caller
                    .call(&tools.store.tool, fill(&tools.store.arguments, &variables))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// The server's best `limit` hits for `query`, best first.
    pub async fn search(
        &self,
        caller: &impl ToolCaller,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Hit>, CallError> {
        let mut hits = match self {
            ToolMapping::KnowledgeGraph => {
                let words = search_words(query);
                let mut matched: HashMap<Uuid, usize> = HashMap::new();
                for word in &words {
                    let found = caller
                        .call("search_nodes", json!({ "query": word }))
                        .await?;
                    for id in memory_entities(&found)? {
                        *matched.entry(id).or_default() += 1;
                    }
                }
                let words = words.len().max(1) as f64;
                matched
                    .into_iter()
                    .map(|(id, count)| Hit {
                        id,
                        score: count as f64 / words,
                    })
                    .collect()
            }
            ToolMapping::Tools(tools) => {
                let variables = HashMap::from([("query", json!(query)), ("limit", json!(limit))]);
                let found = caller
                    .call(
                        &tools.search.tool,
                        fill(&tools.search.arguments, &variables),
                    )
                    .await?;
                flat_hits(&found)?
            }
        };
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        Ok(hits)
    }

    /// The ids of the entries of `task_id` the server holds; `None` when this mapping has no
    /// way to ask.
    pub async fn task_entries(
        &self,
        caller: &impl ToolCaller,
        task_id: Uuid,
    ) -> Result<Option<Vec<Uuid>>, CallError> {
        match self {
            ToolMapping::KnowledgeGraph => {
                // Entries carry their task as the observation `task:<id>` (the task entity's
                // name), which `search_nodes` finds as a substring.
                let found = caller
                    .call(
                        "search_nodes",
                        json!({ "query": format!("task:{task_id}") }),
                    )
                    .await?;
                memory_entities(&found).map(Some)
            }
            ToolMapping::Tools(ToolSet { task: None, .. }) => Ok(None),
            ToolMapping::Tools(ToolSet {
                task: Some(call), ..
            }) => {
                let variables = HashMap::from([("task_id", json!(task_id))]);
                let found = caller
                    .call(&call.tool, fill(&call.arguments, &variables))
                    .await?;
                Ok(Some(flat_hits(&found)?.into_iter().map(|h| h.id).collect()))
            }
        }
    }
}

/// The entity of an entry.
fn entity(id: Uuid) -> String {
    format!("mem:{id}")
}

fn observations(record: &Record) -> Vec<String> {
    let mut observations = vec![
        format!("content: {}", record.content),
        format!("intent: {}", record.intent),
        format!("user:{}", record.user_id),
        format!(
            "created: {}",
            record
                .created_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
    ];
    if let Some(agent) = record.agent_id {
        observations.push(format!("agent:{agent}"));
    }
    if let Some(task) = record.task_id {
        observations.push(format!("task:{task}"));
    }
    if let Some(project) = record.project_id {
        observations.push(format!("project:{project}"));
    }
    observations
}

/// The words a knowledge-graph search asks for, one call each: at most 8.
fn search_words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.dedup();
    words.truncate(8);
    if words.is_empty() {
        words.push(query.trim().to_owned());
    }
    words
}

/// The entries among a graph answer's entities (`{entities: [{name: "mem:<id>", …}]}`).
fn memory_entities(found: &Value) -> Result<Vec<Uuid>, CallError> {
    let entities = found
        .get("entities")
        .and_then(Value::as_array)
        .ok_or_else(|| CallError::Malformed("no `entities` array".to_owned()))?;
    Ok(entities
        .iter()
        .filter_map(|e| e.get("name")?.as_str()?.strip_prefix("mem:")?.parse().ok())
        .collect())
}

/// The hits of a flat answer (see the module's documentation).
fn flat_hits(found: &Value) -> Result<Vec<Hit>, CallError> {
    let items = match found {
        Value::Array(items) => items,
        Value::Object(object) => ["results", "memories", "matches"]
            .iter()
            .find_map(|key| object.get(*key)?.as_array())
            .ok_or_else(|| CallError::Malformed("no array of results".to_owned()))?,
        _ => return Err(CallError::Malformed("not a list of results".to_owned())),
    };
    Ok(items
        .iter()
        .filter_map(|item| {
            let id = ["id", "key", "memory_id"]
                .iter()
                .find_map(|k| item.get(*k)?.as_str()?.parse().ok())
                .or_else(|| {
                    item.get("metadata")?
                        .get("memory_id")?
                        .as_str()?
                        .parse()
                        .ok()
                })?;
            let score = ["score", "similarity", "similarity_score"]
                .iter()
                .find_map(|k| item.get(*k)?.as_f64())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
            Some(Hit { id, score })
        })
        .collect())
}

fn record_variables(record: &Record) -> HashMap<&'static str, Value> {
    HashMap::from([
        ("id", json!(record.id)),
        ("content", json!(record.content)),
        ("intent", json!(record.intent)),
        ("user_id", json!(record.user_id)),
        ("agent_id", json!(record.agent_id)),
        ("task_id", json!(record.task_id)),
        ("project_id", json!(record.project_id)),
        (
            "created_at",
            json!(
                record
                    .created_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            ),
        ),
        ("metadata", record.metadata.clone()),
    ])
}

/// The template with its placeholders filled in.
fn fill(template: &Value, variables: &HashMap<&str, Value>) -> Value {
    match template {
        Value::String(text) => {
            if let Some(value) = text
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
                .and_then(|name| variables.get(name.trim()))
            {
                return value.clone();
            }
            let mut filled = text.clone();
            for (name, value) in variables {
                let placeholder = format!("{{{{{name}}}}}");
                if filled.contains(&placeholder) {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    filled = filled.replace(&placeholder, &text);
                }
            }
            Value::String(filled)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, variables)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), fill(v, variables)))
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script and remembers the calls.
    struct Scripted {
        calls: Mutex<Vec<(String, Value)>>,
        answer: fn(&str, &Value) -> Result<Value, CallError>,
    }

    impl ToolCaller for Scripted {
        async fn call(&self, tool: &str, arguments: Value) -> Result<Value, CallError> {
            self.calls
                .lock()
                .unwrap()
                .push((tool.to_owned(), arguments.clone()));
            (self.answer)(tool, &arguments)
        }
    }

    fn record() -> Record {
        Record {
            id: Uuid::from_u128(1),
            content: "axum extractors run in order".into(),
            intent: "research".into(),
            user_id: Uuid::from_u128(2),
            agent_id: None,
            task_id: Some(Uuid::from_u128(3)),
            project_id: Some(Uuid::from_u128(4)),
            created_at: DateTime::from_timestamp(1_770_000_000, 0).unwrap(),
            metadata: json!({"why": {"intent": "research"}}),
        }
    }

    #[tokio::test]
    async fn a_graph_store_creates_the_entry_its_task_and_project_and_links_them() {
        let caller = Scripted {
            calls: Mutex::default(),
            answer: |_, _| Ok(json!({"entities": []})),
        };
        ToolMapping::KnowledgeGraph
            .store(&caller, &record())
            .await
            .unwrap();
        let calls = caller.calls.lock().unwrap();
        assert_eq!(calls[0].0, "create_entities");
        let entities = calls[0].1["entities"].as_array().unwrap();
        assert_eq!(entities[0]["name"], format!("mem:{}", Uuid::from_u128(1)));
        assert_eq!(entities[0]["entityType"], "research");
        assert!(
            entities[0]["observations"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("task:{}", Uuid::from_u128(3))))
        );
        assert_eq!(entities.len(), 3);
        assert_eq!(calls[1].0, "create_relations");
        assert_eq!(calls[1].1["relations"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_graph_search_asks_per_word_and_ranks_by_the_share_of_words_matched() {
        let caller = Scripted {
            calls: Mutex::default(),
            answer: |_, arguments| {
                let both = format!("mem:{}", Uuid::from_u128(1));
                let one = format!("mem:{}", Uuid::from_u128(2));
                Ok(match arguments["query"].as_str().unwrap() {
                    "axum" => {
                        json!({"entities": [{"name": both}, {"name": one}, {"name": "task:x"}]})
                    }
                    _ => json!({"entities": [{"name": both}]}),
                })
            },
        };
        let hits = ToolMapping::KnowledgeGraph
            .search(&caller, "Axum extractors", 10)
            .await
            .unwrap();
        assert_eq!(
            hits,
            vec![
                Hit {
                    id: Uuid::from_u128(1),
                    score: 1.0
                },
                Hit {
                    id: Uuid::from_u128(2),
                    score: 0.5
                },
            ]
        );
        assert_eq!(caller.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_tool_set_fills_its_templates_and_reads_flat_hits() {
        let mapping = ToolMapping::parse(Some(
            r#"{"store": {"tool": "memory_store", "arguments": {"key": "{{id}}", "value": "{{content}}", "metadata": "{{metadata}}", "note": "about {{task_id}}"}},
                "search": {"tool": "vector_search", "arguments": {"query": "{{query}}", "limit": "{{limit}}"}}}"#,
        ))
        .unwrap();
        let caller = Scripted {
            calls: Mutex::default(),
            answer: |tool, _| {
                Ok(match tool {
                    "vector_search" => json!({"results": [
                        {"key": Uuid::from_u128(1).to_string(), "score": 0.4},
                        {"metadata": {"memory_id": Uuid::from_u128(2).to_string()}, "similarity": 0.9},
                        {"key": "not-ours"}
                    ]}),
                    _ => json!({"success": true}),
                })
            },
        };
        mapping.store(&caller, &record()).await.unwrap();
        let hits = mapping.search(&caller, "axum", 5).await.unwrap();
        assert_eq!(
            mapping
                .task_entries(&caller, Uuid::from_u128(3))
                .await
                .unwrap(),
            None
        );
        let calls = caller.calls.lock().unwrap();
        assert_eq!(calls[0].0, "memory_store");
        assert_eq!(calls[0].1["key"], json!(Uuid::from_u128(1)));
        assert_eq!(calls[0].1["metadata"]["why"]["intent"], "research");
        assert_eq!(calls[0].1["note"], format!("about {}", Uuid::from_u128(3)));
        assert_eq!(calls[1].1, json!({"query": "axum", "limit": 5}));
        assert_eq!(
            hits.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![Uuid::from_u128(2), Uuid::from_u128(1)]
        );
    }

    #[test]
    fn the_setting_is_the_graph_by_default_and_refuses_nonsense() {
        assert_eq!(
            ToolMapping::parse(None).unwrap(),
            ToolMapping::KnowledgeGraph
        );
        assert_eq!(
            ToolMapping::parse(Some("knowledge-graph")).unwrap(),
            ToolMapping::KnowledgeGraph
        );
        assert!(ToolMapping::parse(Some("{\"store\": 1}")).is_err());
    }

    #[test]
    fn a_graph_answer_without_entities_is_malformed() {
        assert!(matches!(
            memory_entities(&json!({"bogus": true})),
            Err(CallError::Malformed(_))
        ));
    }
}
