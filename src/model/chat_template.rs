//! Chat templates: the model's own Jinja template rendered with minijinja, set up to give the
//! same text as transformers' `apply_chat_template` (jinja2 with trim_blocks, lstrip_blocks,
//! loop controls, Python string methods, its own `tojson`, `raise_exception`, `strftime_now`).

mod tojson;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{context, Environment, Error, ErrorKind};
use serde_json::Value as Json;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build();
        env.set_syntax(syntax.expect("the default delimiters are valid"));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson::tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|err| anyhow!("invalid chat template: {}", describe(&err)))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
        })
    }

    /// tokenizer_config.json's `chat_template` (a string, or a list of `{name, template}` of
    /// which "default" is taken), or else a `chat_template.jinja` file beside it; Ok(None)
    /// when neither exists. BOS/EOS come from tokenizer_config.json.
    pub fn from_hf_folder(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path)
                .with_context(|| format!("{}: cannot read", config_path.display()))?;
            serde_json::from_str(&text)
                .map_err(|err| anyhow!("{}: invalid JSON: {err}", config_path.display()))?
        } else {
            Json::Null
        };
        let from_config =
            config_template(&config).map_err(|err| anyhow!("{}: {err}", config_path.display()))?;
        let jinja_path = dir.join("chat_template.jinja");
        let (source, source_path) = match from_config {
            Some(source) => (source, config_path.as_path()),
            None if jinja_path.exists() => {
                let source = std::fs::read_to_string(&jinja_path)
                    .with_context(|| format!("{}: cannot read", jinja_path.display()))?;
                (source, jinja_path.as_path())
            }
            None => return Ok(None),
        };
        let bos = config_token(&config, "bos_token");
        let eos = config_token(&config, "eos_token");
        Self::new(&source, bos.as_deref(), eos.as_deref())
            .map(Some)
            .map_err(|err| anyhow!("{}: {err}", source_path.display()))
    }

    /// The conversation as the model's prompt text; `add_generation_prompt` opens the
    /// assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .expect("the template was added in new()");
        // transformers passes tools/documents as None, and leaves out special tokens it lacks.
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => self.bos_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
            eos_token => self.eos_token.as_deref().map(Value::from).unwrap_or(Value::UNDEFINED),
        };
        template
            .render(ctx)
            .map_err(|err| anyhow!("chat template failed: {}", describe(&err)))
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The template a tokenizer_config.json holds, if any.
fn config_template(config: &Json) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(named)) => {
            let default = named
                .iter()
                .find(|entry| entry.get("name").and_then(Json::as_str) == Some("default"));
            match default
                .and_then(|entry| entry.get("template"))
                .and_then(Json::as_str)
            {
                Some(source) => Ok(Some(source.to_owned())),
                None => bail!(
                    "chat_template lists no {{\"name\": \"default\", \"template\": ...}} entry"
                ),
            }
        }
        Some(_) => bail!("chat_template must be a string or a list of named templates"),
    }
}

/// `bos_token`/`eos_token`: a string or an AddedToken object with `content`.
fn config_token(config: &Json, key: &str) -> Option<String> {
    match config.get(key)? {
        Json::String(token) => Some(token.clone()),
        Json::Object(object) => object
            .get("content")
            .and_then(Json::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// minijinja's message, with the template line and the underlying cause.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        write!(text, ": {cause}").expect("writing to a String");
        source = cause.source();
    }
    text
}

/// Templates call this to reject a conversation they cannot format.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The local time formatted with a C `strftime` format, as Python's `datetime.now().strftime`.
fn strftime_now(format: String) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: bad format {format:?}"),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Vec<Message> {
        vec![Message::new("user", content)]
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("invalid chat template"), "{err}");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let template = ChatTemplate::new(
            "{{ raise_exception('no ' + messages[0].role) }}",
            None,
            None,
        )
        .unwrap();
        let err = template
            .render(&user("x"), false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no user"), "{err}");
    }

    #[test]
    fn strftime_now_formats_the_current_date() {
        let template = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
        let year = chrono::Local::now().format("%Y").to_string();
        assert_eq!(template.render(&[], false).unwrap(), year);
    }

    #[test]
    fn missing_special_tokens_are_undefined_and_tools_none() {
        let template = ChatTemplate::new(
            "{{ bos_token is defined }} {{ eos_token }} {{ tools is none }} {{ documents is defined }}",
            None,
            Some("</s>"),
        )
        .unwrap();
        // Booleans print as Python does.
        assert_eq!(template.render(&[], false).unwrap(), "False </s> True True");
    }

    #[test]
    fn hf_folder_reads_config_string_list_or_jinja_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_hf_folder(dir.path()).unwrap().is_none());

        let jinja = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}";
        std::fs::write(dir.path().join("chat_template.jinja"), jinja).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}}"#,
        )
        .unwrap();
        let template = ChatTemplate::from_hf_folder(dir.path()).unwrap().unwrap();
        assert_eq!(template.source(), jinja);
        assert_eq!(template.render(&user("hi"), false).unwrap(), "<s>hi");

        let config = r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                          {"name": "default", "template": "D{{ eos_token }}"}],
                         "eos_token": "</s>"}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        let template = ChatTemplate::from_hf_folder(dir.path()).unwrap().unwrap();
        assert_eq!(template.render(&user("hi"), false).unwrap(), "D</s>");

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "S"}"#,
        )
        .unwrap();
        let template = ChatTemplate::from_hf_folder(dir.path()).unwrap().unwrap();
        assert_eq!(template.source(), "S");
    }

    #[test]
    fn hf_folder_bad_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "x"}]}"#,
        )
        .unwrap();
        let err = ChatTemplate::from_hf_folder(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("default"),
            "{err}"
        );

        std::fs::write(dir.path().join("tokenizer_config.json"), "{").unwrap();
        let err = ChatTemplate::from_hf_folder(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tokenizer_config.json: invalid JSON"), "{err}");

        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "{% if %}"}"#,
        )
        .unwrap();
        let err = ChatTemplate::from_hf_folder(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json: invalid chat template"),
            "{err}"
        );
    }
}
