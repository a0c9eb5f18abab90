//! Inputs of typical size shared by the benchmarks: a chat request of a few turns and the
//! completion that answers it.

use serde_json::{json, Map, Value};

/// A chat.completions body as a service sends it: a system prompt and three turns,
/// about 1.3 KB of JSON.
pub fn chat_body() -> Map<String, Value> {
    let body = json!({
        "model": "llama-3.1-8b-instruct",
        "messages": [
            {"role": "system", "content": "You are the support assistant of an online \
                bookshop. Answer in the customer's language, in at most three short \
                paragraphs. Never promise a refund: point to the returns page instead. \
                When an order number is given, repeat it so the customer can check it."},
            {"role": "user", "content": "Hello, I ordered two books last Tuesday (order \
                88412-C) and only one has arrived. The parcel looked intact."},
            {"role": "assistant", "content": "Hello! Thank you for order 88412-C. Your two \
                books were sent from different warehouses, so they travel separately; the \
                second one left yesterday and should reach you within three working days."},
            {"role": "user", "content": "Thanks. Can I change the delivery address of the \
                second one? I will be away from Thursday until the end of next week."}
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "top_p": 0.95,
        "user": "customer-5531"
    });
    match body {
        Value::Object(map) => map,
        _ => unreachable!("the literal above is an object"),
    }
}

/// The `chat.completion` object a backend answers `chat_body` with.
pub fn completion() -> Value {
    json!({
        "id": "chatcmpl-9f2c1e7a4b",
        "object": "chat.completion",
        "created": 1764000123u64,
        "model": "llama-3.1-8b-instruct",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Of course. The second parcel of \
                order 88412-C is already with the carrier, so the address can no longer be \
                changed on our side, but the carrier's tracking page lets you pick a \
                pick-up point or a new delivery day. The link is in the dispatch e-mail you \
                received yesterday."},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 214, "completion_tokens": 71, "total_tokens": 285}
    })
}
