"""Chat messages -> prompt token ids, with the model's own chat template when it has one."""

from __future__ import annotations

from shardserve.serving.http_errors import bad_request


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Render with tokenizer_config.json's chat_template (it adds its own special tokens, so
    none are added again); models without one get a plain `role: content` transcript."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja2 errors: templates often raise on unsupported role orders
            raise bad_request(f"messages: the model's chat template rejected them: {e}", "messages") from None
        return tokenizer.encode(text, add_special_tokens=False)
    transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return tokenizer.encode(transcript + "assistant:")
