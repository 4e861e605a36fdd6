//! A JSON Schema of journey and policies files, for editors (YAML language servers) to complete
//! and check files as they are typed.
//!
//! The schema follows the loader ([`crate::load_sources`]) as closely as a schema can: the same
//! fields, required fields, kinds, keywords and formats. Rules that need more than one file or
//! more than one value at once (step ids that exist, CEL that compiles, loops that never wait,
//! unique ids) are left to `journey validate`.

use serde_json::{json, Map, Value};

/// The schema's address (`$id`).
const ID: &str = "https://journeyd.dev/schemas/journey.schema.json";

/// A journey id or a step id.
const ID_PATTERN: &str = "^[a-z][a-z0-9_]*$";

/// Each unit at most once, largest first; every part a whole number.
const DURATION_PATTERN: &str = "^([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$";

/// "HH:MM" from 00:00 to 23:59 (the hour may have one digit, as the loader accepts).
const TIME_PATTERN: &str = "^([01]?[0-9]|2[0-3]):[0-5][0-9]$";

/// The JSON Schema (draft 2020-12) of both kinds of files in a journeys folder: a journey file
/// (top-level `journey:`) and the policies file (top-level `policies:`).
///
/// Editors read it as YAML: point the YAML language server at it (for instance with a
/// `# yaml-language-server: $schema=...` comment, or `yaml.schemas` in the editor settings).
/// A file the schema accepts may still be refused by `journey validate` for rules no schema can
/// state (a `next` naming a step that does not exist, a CEL expression that does not parse, a
/// loop that never waits, two journeys with the same id). The other way round, the schema is
/// stricter than the loader in a few corners, to steer designers to the usual spelling: names
/// (channels, templates, event types) must be YAML strings, days lowercase, and conditions
/// strings or booleans.
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ID,
        "title": "journeyd journey or policies file",
        "description": "A file of a journeys folder: a journey (top-level `journey:` key, one \
            file per journey) or the contact policies (top-level `policies:` key, at most one \
            such file in the folder).",
        "type": "object",
        // As the loader does: a `journey` key makes a journey file, else a `policies` key the
        // policies file (so that errors are reported inside the right kind of file).
        "if": { "required": ["journey"] },
        "then": { "$ref": "#/$defs/journey_file" },
        "else": {
            "if": { "required": ["policies"] },
            "then": { "$ref": "#/$defs/policies_file" },
            "else": {
                "description": "A file starts with `journey: ID` (a journey) or `policies:` \
                    (the contact policies).",
                "oneOf": [
                    { "$ref": "#/$defs/journey_file" },
                    { "$ref": "#/$defs/policies_file" }
                ]
            }
        },
        "$defs": defs()
    })
}

fn defs() -> Value {
    let mut defs = Map::new();
    // ------------------------------------------------------------------------------------
    // Scalars
    defs.insert(
        "id".into(),
        json!({
            "description": "An id: lowercase letters, digits and _, starting with a letter \
                ([a-z][a-z0-9_]*).",
            "type": "string",
            "pattern": ID_PATTERN
        }),
    );
    defs.insert(
        "step_ref".into(),
        json!({
            "description": "The id of a step of this journey.",
            "type": "string",
            "pattern": ID_PATTERN
        }),
    );
    defs.insert(
        "duration".into(),
        json!({
            "description": "A duration: a positive whole number with a unit, s, m, h, d or w, \
                optionally combined, largest unit first, each unit once (30m, 3d, 1d12h, 2w).",
            "type": "string",
            "minLength": 1,
            "allOf": [
                { "pattern": DURATION_PATTERN },
                { "pattern": "[1-9]", "description": "The duration must be longer than zero." }
            ],
            "examples": ["30m", "2h", "3d", "1d12h", "1w"]
        }),
    );
    defs.insert(
        "time_of_day".into(),
        json!({
            "description": "A local time of day \"HH:MM\", from 00:00 to 23:59 (quote it).",
            "type": "string",
            "pattern": TIME_PATTERN,
            "examples": ["09:00", "21:00"]
        }),
    );
    defs.insert(
        "name".into(),
        json!({
            "description": "A name (not empty).",
            "type": "string",
            "pattern": "\\S"
        }),
    );
    defs.insert(
        "event_type".into(),
        json!({
            "description": "An event type, such as purchase or email_clicked.",
            "type": "string",
            "pattern": "\\S"
        }),
    );
    defs.insert(
        "event_types".into(),
        json!({
            "description": "A list of event types, such as [purchase, account_closed].",
            "type": "array",
            "items": { "$ref": "#/$defs/event_type" }
        }),
    );
    defs.insert(
        "channel".into(),
        json!({
            "description": "A channel name, such as email, sms or push.",
            "type": "string",
            "pattern": "\\S",
            "examples": ["email", "sms", "push"]
        }),
    );
    defs.insert(
        "channels".into(),
        json!({
            "description": "A list of channel names, such as [sms, push].",
            "type": "array",
            "items": { "$ref": "#/$defs/channel" }
        }),
    );
    defs.insert(
        "condition".into(),
        json!({
            "description": "A CEL (Common Expression Language) condition. It sees `event` (the \
                current event: event.type, event.channel, event.occurred_at, \
                event.attributes.<name>) and `profile` (the customer's attributes). A condition \
                that fails to evaluate (missing attribute, wrong type) is false; one that does \
                not parse is a validation error.",
            "type": ["string", "boolean"],
            "minLength": 1,
            "examples": ["profile.ltv_segment in [\"high\", \"medium\"]"]
        }),
    );
    defs.insert(
        "cel_value".into(),
        json!({
            "description": "A CEL (Common Expression Language) expression whose value is used. \
                It sees `event` and `profile`. To write a string, quote it inside the YAML: \
                '\"text\"'.",
            "type": ["string", "number", "boolean"],
            "minLength": 1
        }),
    );
    defs.insert(
        "category".into(),
        json!({
            "description": "marketing (default) or service. `category: service` journeys are not \
                limited by frequency caps that name `category: marketing`.",
            "type": "string",
            "enum": ["marketing", "service"]
        }),
    );
    defs.insert(
        "day".into(),
        json!({
            "description": "A day of the week.",
            "type": "string",
            "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        }),
    );
    defs.insert(
        "positive".into(),
        json!({
            "description": "A positive whole number.",
            "type": "integer",
            "minimum": 1,
            "maximum": u32::MAX
        }),
    );

    // ------------------------------------------------------------------------------------
    // A journey
    defs.insert(
        "journey_file".into(),
        json!({
            "title": "journey",
            "description": "A journey: one YAML file per journey. Steps run in list order; \
                `next: <step id>` jumps instead. After the last step (or `exit: {}`) the \
                instance ends.",
            "type": "object",
            "additionalProperties": false,
            "required": ["journey", "version", "entry", "steps"],
            "properties": {
                "journey": {
                    "description": "The journey id, unique across the folder: lowercase letters, \
                        digits and _, starting with a letter ([a-z][a-z0-9_]*).",
                    "type": "string",
                    "pattern": ID_PATTERN
                },
                "version": {
                    "description": "A positive integer; bump it when the steps change.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": u32::MAX
                },
                "name": {
                    "description": "Optional, free text: the journey's name for people.",
                    "type": ["string", "number", "boolean"]
                },
                "priority": {
                    "description": "Optional whole number, default 0; higher wins arbitration \
                        (when one input leads several journeys to send to the same customer, \
                        the sends are ranked by journey priority, then journey id, before caps \
                        are applied).",
                    "type": "integer",
                    "default": 0
                },
                "category": {
                    "$ref": "#/$defs/category",
                    "description": "Optional: marketing (default) or service. `category: \
                        service` journeys are not limited by caps that name `category: \
                        marketing`.",
                    "default": "marketing"
                },
                "entry": { "$ref": "#/$defs/entry" },
                "exit": { "$ref": "#/$defs/journey_exit" },
                "goal": { "$ref": "#/$defs/goal" },
                "steps": {
                    "description": "The steps, run in list order (`next: <step id>` jumps \
                        instead). Each has an `id` and exactly one of send, wait, wait_for, \
                        branch, split, update, exit.",
                    "type": "array",
                    "minItems": 1,
                    "items": { "$ref": "#/$defs/step" }
                }
            }
        }),
    );
    defs.insert(
        "entry".into(),
        json!({
            "description": "When a customer enters the journey: exactly one of `event` / \
                `inactivity` / `audience`, an optional `if` condition, and `reentry`. A customer \
                has at most one active instance of a journey; while one is active, entry \
                triggers for that journey are ignored.",
            "type": "object",
            "additionalProperties": false,
            "oneOf": [
                { "required": ["event"] },
                { "required": ["inactivity"] },
                { "required": ["audience"] }
            ],
            "properties": {
                "event": {
                    "$ref": "#/$defs/event_type",
                    "description": "Enter on this event type: an event of this type starts an \
                        instance for that customer, when `if` holds."
                },
                "inactivity": { "$ref": "#/$defs/inactivity" },
                "audience": { "$ref": "#/$defs/audience" },
                "if": {
                    "$ref": "#/$defs/condition",
                    "description": "Optional CEL condition: the customer enters only when it \
                        holds. It sees `event` (the entry event), `profile` and `now`."
                },
                "reentry": { "$ref": "#/$defs/reentry" }
            }
        }),
    );
    defs.insert(
        "audience".into(),
        json!({
            "description": "Enter by audience runs (one-to-many campaigns): at `at`, and every \
                `every` after it when given, every known customer for whom `if` holds enters, \
                subject to `reentry` and to one active instance at a time. In `if`, `event` is \
                the synthetic audience event (type `audience`, no channel, occurred_at the run \
                time, no attributes) and `now` the run time.",
            "type": "object",
            "additionalProperties": false,
            "required": ["at"],
            "properties": {
                "at": {
                    "type": "string",
                    "description": "The first run, an RFC 3339 time such as \
                        \"2026-02-02T09:00:00Z\" (quote it)."
                },
                "every": {
                    "$ref": "#/$defs/duration",
                    "description": "Optional: run again every this long (without it, once)."
                }
            }
        }),
    );
    defs.insert(
        "inactivity".into(),
        json!({
            "description": "Enter when this event has not recurred for a duration: each event \
                of type `event` (re)arms a per-customer timer at occurred_at + `for`; when it \
                fires with no newer such event in between, the customer enters (when `if` \
                holds). A customer who never had the event never enters this way.",
            "type": "object",
            "additionalProperties": false,
            "required": ["event", "for"],
            "properties": {
                "event": {
                    "$ref": "#/$defs/event_type",
                    "description": "The event type whose absence is watched."
                },
                "for": {
                    "$ref": "#/$defs/duration",
                    "description": "How long the event must not recur (a duration such as 60d)."
                }
            }
        }),
    );
    defs.insert(
        "reentry".into(),
        json!({
            "description": "Whether a customer who finished (or left) the journey may enter \
                again: never (default), always, or a cooldown duration such as 90d measured \
                from the previous entry.",
            "default": "never",
            "oneOf": [
                { "type": "string", "enum": ["never", "always"] },
                { "$ref": "#/$defs/duration" }
            ]
        }),
    );
    defs.insert(
        "journey_exit".into(),
        json!({
            "description": "Optional: events that end the active instance at once (and cancel \
                its outstanding sends, reason `exited`).",
            "type": "object",
            "additionalProperties": false,
            "required": ["on"],
            "properties": {
                "on": {
                    "$ref": "#/$defs/event_types",
                    "description": "An event of one of these types ends the active instance at \
                        once."
                }
            }
        }),
    );
    defs.insert(
        "goal".into(),
        json!({
            "description": "Optional conversion event: a conversion is recorded for the instance \
                (once) when this event comes within `within` of entry. It does not end the \
                instance unless the same event is also in `exit.on`.",
            "type": "object",
            "additionalProperties": false,
            "required": ["event", "within"],
            "properties": {
                "event": {
                    "$ref": "#/$defs/event_type",
                    "description": "The conversion event type."
                },
                "within": {
                    "$ref": "#/$defs/duration",
                    "description": "The conversion counts when the event comes within this time \
                        of entry (a duration such as 30d)."
                }
            }
        }),
    );

    // ------------------------------------------------------------------------------------
    // Steps
    defs.insert(
        "step".into(),
        json!({
            "description": "A step: an `id` and exactly one of send, wait, wait_for, branch, \
                split, update, exit. `next: <step id>` (on send, wait, wait_for and update \
                only) jumps there instead of going on to the following step.",
            "oneOf": [
                { "$ref": "#/$defs/send_step" },
                { "$ref": "#/$defs/wait_step" },
                { "$ref": "#/$defs/wait_for_step" },
                { "$ref": "#/$defs/branch_step" },
                { "$ref": "#/$defs/decide_step" },
                { "$ref": "#/$defs/split_step" },
                { "$ref": "#/$defs/update_step" },
                { "$ref": "#/$defs/exit_step" }
            ]
        }),
    );
    defs.insert(
        "step_id".into(),
        json!({
            "description": "The step id, unique in the journey: lowercase letters, digits and \
                _, starting with a letter ([a-z][a-z0-9_]*).",
            "type": "string",
            "pattern": ID_PATTERN
        }),
    );
    defs.insert(
        "next".into(),
        json!({
            "description": "Optional: the id of the step to go to after this one (default: the \
                following step in the list; after the last step the instance ends).",
            "type": "string",
            "pattern": ID_PATTERN
        }),
    );
    defs.insert(
        "send".into(),
        json!({
            "description": "Emit a send action to a channel (subject to the contact policies). \
                The send is outstanding until its ttl has passed or it is cancelled.",
            "type": "object",
            "additionalProperties": false,
            "required": ["channel", "template"],
            "properties": {
                "channel": {
                    "$ref": "#/$defs/channel",
                    "description": "The channel the send action goes to, such as email, sms or \
                        push."
                },
                "template": {
                    "$ref": "#/$defs/name",
                    "description": "The template the channel renders."
                },
                "ttl": {
                    "$ref": "#/$defs/duration",
                    "description": "How long the send stays outstanding (cancellable), default \
                        7d.",
                    "default": "7d"
                },
                "cancel_on": {
                    "$ref": "#/$defs/event_types",
                    "description": "While the send is outstanding, an event of one of these \
                        types from another channel than the send's own (an event with no \
                        channel counts as another channel) cancels it (reason `responded`)."
                },
                "vars": {
                    "description": "Maps names to CEL expressions whose values go with the \
                        action for personalisation.",
                    "type": "object",
                    "propertyNames": { "pattern": "\\S" },
                    "additionalProperties": { "$ref": "#/$defs/cel_value" }
                }
            }
        }),
    );
    defs.insert(
        "wait".into(),
        json!({
            "description": "Wait a duration (such as 3d), or until the next local time \
                {until: \"HH:MM\", days: [mon, ...]} in the customer's time zone, or until a \
                date in the profile {date: <CEL>, offset: -7, at: \"HH:MM\", on_past: <step>}.",
            "oneOf": [
                { "$ref": "#/$defs/duration" },
                { "$ref": "#/$defs/wait_until" },
                { "$ref": "#/$defs/wait_date" }
            ]
        }),
    );
    defs.insert(
        "wait_until".into(),
        json!({
            "description": "Wait until the next such local time (in the customer's time zone: \
                the profile attribute `timezone`, else the policies' default_timezone, else \
                UTC) on one of the days (default any day).",
            "type": "object",
            "additionalProperties": false,
            "required": ["until"],
            "properties": {
                "until": {
                    "$ref": "#/$defs/time_of_day",
                    "description": "The local time of day to wait for, \"HH:MM\" (quote it)."
                },
                "days": {
                    "description": "Optional: the days of the week the time may fall on \
                        (default any day).",
                    "type": "array",
                    "minItems": 1,
                    "items": { "$ref": "#/$defs/day" }
                }
            }
        }),
    );
    defs.insert(
        "wait_date".into(),
        json!({
            "description": "Wait until a date the profile gives: on entering the step `date` is \
                evaluated once, its local calendar date taken in the customer's time zone, \
                `offset` days added, and the wait ends at `at` local time that day. When that \
                moment is not later than now, or `date` is not a date, the wait ends at once \
                and the instance goes to `on_past` (else to the next step).",
            "type": "object",
            "additionalProperties": false,
            "required": ["date", "at"],
            "properties": {
                "date": {
                    "$ref": "#/$defs/cel_value",
                    "description": "A CEL expression giving a \"YYYY-MM-DD\" string or an RFC \
                        3339 timestamp string, such as profile.renewal_date."
                },
                "offset": {
                    "description": "Optional: whole calendar days added to the date (may be \
                        negative; default 0).",
                    "type": "integer"
                },
                "at": {
                    "$ref": "#/$defs/time_of_day",
                    "description": "The local time of day the wait ends, \"HH:MM\" (quote it)."
                },
                "on_past": {
                    "$ref": "#/$defs/step_id",
                    "description": "Optional: where to go when the moment has already passed \
                        or the date is not one (default: the next step)."
                }
            }
        }),
    );
    defs.insert(
        "wait_for".into(),
        json!({
            "description": "Wait for one of the events (optionally matching a CEL condition) or \
                for the timeout, whichever comes first.",
            "type": "object",
            "additionalProperties": false,
            "required": ["events", "timeout"],
            "properties": {
                "events": {
                    "$ref": "#/$defs/event_types",
                    "description": "The event types waited for (at least one).",
                    "minItems": 1
                },
                "if": {
                    "$ref": "#/$defs/condition",
                    "description": "Optional CEL condition the event must match. It sees \
                        `event` (the event waited for) and `profile`."
                },
                "timeout": {
                    "$ref": "#/$defs/duration",
                    "description": "Required: how long to wait for the events (a duration such \
                        as 3d)."
                },
                "on_event": {
                    "$ref": "#/$defs/step_ref",
                    "description": "Optional: the step to go to when an event comes (default: \
                        the next step)."
                },
                "on_timeout": {
                    "$ref": "#/$defs/step_ref",
                    "description": "Optional: the step to go to when the timeout passes \
                        (default: the next step)."
                }
            }
        }),
    );
    defs.insert(
        "branch".into(),
        json!({
            "description": "Go to the first arm whose condition holds: a list of {if: CEL, \
                next: id} arms ending with {else: id} (required, and last).",
            "type": "array",
            "minItems": 1,
            "items": {
                "oneOf": [
                    { "$ref": "#/$defs/branch_arm" },
                    { "$ref": "#/$defs/else_arm" }
                ]
            },
            "contains": { "$ref": "#/$defs/else_arm" },
            "minContains": 1,
            "maxContains": 1
        }),
    );
    defs.insert(
        "decide".into(),
        json!({
            "description": "Next best action: every option whose `if` holds (an option without \
                `if` always does) is eligible and its `score` (CEL giving a number; 0 when \
                absent) is evaluated; the eligible option with the highest score wins, the \
                earlier on equal scores. A list of {if?, score?, next} options ending with \
                {else: id} (required, and last), taken when no option is eligible.",
            "type": "array",
            "minItems": 2,
            "items": {
                "oneOf": [
                    { "$ref": "#/$defs/decide_option" },
                    { "$ref": "#/$defs/else_arm" }
                ]
            },
            "contains": { "$ref": "#/$defs/else_arm" },
            "minContains": 1,
            "maxContains": 1
        }),
    );
    defs.insert(
        "decide_option".into(),
        json!({
            "description": "A decide option: eligible when `if` holds (always without it), \
                ranked by `score`.",
            "type": "object",
            "additionalProperties": false,
            "required": ["next"],
            "properties": {
                "if": {
                    "$ref": "#/$defs/condition",
                    "description": "Optional: the CEL condition that makes this option eligible."
                },
                "score": {
                    "$ref": "#/$defs/cel_value",
                    "description": "Optional: a CEL expression giving a number (default 0); \
                        the highest eligible score wins."
                },
                "next": {
                    "$ref": "#/$defs/step_ref",
                    "description": "The step to go to when this option wins."
                }
            }
        }),
    );
    defs.insert(
        "branch_arm".into(),
        json!({
            "description": "A branch arm: when `if` holds, go to `next`.",
            "type": "object",
            "additionalProperties": false,
            "required": ["if", "next"],
            "properties": {
                "if": {
                    "$ref": "#/$defs/condition",
                    "description": "The CEL condition of this arm."
                },
                "next": {
                    "$ref": "#/$defs/step_ref",
                    "description": "The step to go to when the condition holds."
                }
            }
        }),
    );
    defs.insert(
        "else_arm".into(),
        json!({
            "description": "The last arm of a branch or a decide: where to go when no condition holds, or no option is eligible.",
            "type": "object",
            "additionalProperties": false,
            "required": ["else"],
            "properties": {
                "else": {
                    "$ref": "#/$defs/step_ref",
                    "description": "The step to go to when no condition holds (required, and \
                        the last arm)."
                }
            }
        }),
    );
    defs.insert(
        "split".into(),
        json!({
            "description": "Random split (A/B/n tests, control groups): a list of {weight: N, \
                next: id} arms. The choice is a deterministic hash of customer, journey and \
                step: the same customer always gets the same arm.",
            "type": "array",
            "minItems": 1,
            "items": { "$ref": "#/$defs/split_arm" }
        }),
    );
    defs.insert(
        "split_arm".into(),
        json!({
            "description": "A split arm: chosen with probability weight / total weight.",
            "type": "object",
            "additionalProperties": false,
            "required": ["weight", "next"],
            "properties": {
                "weight": {
                    "$ref": "#/$defs/positive",
                    "description": "The arm's weight, a positive whole number."
                },
                "next": {
                    "$ref": "#/$defs/step_ref",
                    "description": "The step customers of this arm go to."
                },
                "control": {
                    "type": "boolean",
                    "description": "Optional: this arm is the experiment's control (at most one \
                        per split); the report gives the other arms' lift and p-value against it."
                }
            }
        }),
    );
    defs.insert(
        "update".into(),
        json!({
            "description": "Set profile attributes to the values of CEL expressions: \
                {attr: CEL, ...}.",
            "type": "object",
            "minProperties": 1,
            "propertyNames": { "pattern": "\\S" },
            "additionalProperties": { "$ref": "#/$defs/cel_value" }
        }),
    );
    defs.insert(
        "exit".into(),
        json!({
            "description": "End the instance: `exit: {}`.",
            "oneOf": [
                { "type": "object", "maxProperties": 0 },
                { "type": "null" }
            ]
        }),
    );

    // ------------------------------------------------------------------------------------
    // The policies file
    defs.insert(
        "policies_file".into(),
        json!({
            "title": "policies",
            "description": "The contact policies (at most one such file in the folder).",
            "type": "object",
            "additionalProperties": false,
            "required": ["policies"],
            "properties": {
                "policies": {
                    "description": "The contact policies: default time zone, frequency caps, \
                        quiet hours and consent.",
                    "type": ["object", "null"],
                    "additionalProperties": false,
                    "properties": {
                        "default_timezone": {
                            "description": "The IANA time zone of customers whose profile has \
                                no `timezone` attribute (default UTC), such as Europe/London.",
                            "type": "string",
                            "enum": time_zones()
                        },
                        "frequency_caps": {
                            "description": "Caps on the sends emitted to a customer in a \
                                trailing window. A send that would break a cap is suppressed \
                                (reason `frequency_cap`): nothing is emitted and the instance \
                                moves on.",
                            "type": "array",
                            "items": { "$ref": "#/$defs/frequency_cap" }
                        },
                        "quiet_hours": { "$ref": "#/$defs/quiet_hours" },
                        "consent": { "$ref": "#/$defs/consent" }
                    }
                }
            }
        }),
    );
    defs.insert(
        "frequency_cap".into(),
        json!({
            "description": "At most `max` sends to a customer per trailing `per` window.",
            "type": "object",
            "additionalProperties": false,
            "required": ["channel", "max", "per"],
            "properties": {
                "channel": {
                    "$ref": "#/$defs/channel",
                    "description": "The channel whose sends count and are limited; \"*\" counts \
                        all channels.",
                    "examples": ["*", "sms", "email"]
                },
                "category": {
                    "$ref": "#/$defs/category",
                    "description": "Optional: only sends of journeys of this category count and \
                        are limited (default: every journey)."
                },
                "max": {
                    "$ref": "#/$defs/positive",
                    "description": "The most sends allowed in the window, a positive whole \
                        number."
                },
                "per": {
                    "$ref": "#/$defs/duration",
                    "description": "The trailing window (a duration such as 1d or 7d)."
                }
            }
        }),
    );
    defs.insert(
        "quiet_hours".into(),
        json!({
            "description": "A send due inside quiet hours (customer's local time) on a listed \
                channel is held and emitted at the end of the quiet hours; the instance goes \
                on meanwhile.",
            "type": "object",
            "additionalProperties": false,
            "required": ["from", "to"],
            "properties": {
                "from": {
                    "$ref": "#/$defs/time_of_day",
                    "description": "When quiet hours start, local time \"HH:MM\" (quote it)."
                },
                "to": {
                    "$ref": "#/$defs/time_of_day",
                    "description": "When quiet hours end, local time \"HH:MM\" (quote it); may \
                        be earlier than `from` (overnight), must differ from it."
                },
                "channels": {
                    "$ref": "#/$defs/channels",
                    "description": "The channels whose sends are held during quiet hours."
                }
            }
        }),
    );
    defs.insert(
        "consent".into(),
        json!({
            "description": "Consent rules: a send to a channel in `required` without granted \
                consent is suppressed (reason `no_consent`).",
            "type": "object",
            "additionalProperties": false,
            "required": ["required"],
            "properties": {
                "required": {
                    "$ref": "#/$defs/channels",
                    "description": "Channels that need granted consent (from `consent_changed` \
                        events) before any send."
                }
            }
        }),
    );

    let steps: [(&str, &str, bool); 8] = [
        (
            "send",
            "A send step: emit a send action to a channel.",
            true,
        ),
        (
            "wait",
            "A wait step: wait a duration, until a local time, or until a date in the profile.",
            true,
        ),
        (
            "wait_for",
            "A wait_for step: wait for one of some events, or for a timeout.",
            true,
        ),
        (
            "branch",
            "A branch step: go to the first arm whose condition holds (no `next`).",
            false,
        ),
        (
            "decide",
            "A decide step (next best action): of the options whose condition holds, the one \
             with the highest score (no `next`).",
            false,
        ),
        (
            "split",
            "A split step: a deterministic random choice between arms (no `next`).",
            false,
        ),
        ("update", "An update step: set profile attributes.", true),
        ("exit", "An exit step: end the instance (no `next`).", false),
    ];
    for (kind, description, has_next) in steps {
        let mut properties = json!({
            "id": { "$ref": "#/$defs/step_id" },
            kind: { "$ref": format!("#/$defs/{kind}") }
        });
        if has_next {
            properties["next"] = json!({ "$ref": "#/$defs/next" });
        }
        defs.insert(
            format!("{kind}_step"),
            json!({
                "title": format!("{kind} step"),
                "description": description,
                "type": "object",
                "additionalProperties": false,
                "required": ["id", kind],
                "properties": properties
            }),
        );
    }
    Value::Object(defs)
}

/// Every IANA time zone name the loader accepts.
fn time_zones() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    names.sort_unstable();
    names
}
