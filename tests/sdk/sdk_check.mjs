// Checks that the official OpenAI and Anthropic SDKs get well-formed answers
// from keyplane-mock (or anything that speaks like it, e.g. a keyplane
// gateway), streaming included.
//
//   node sdk_check.mjs BASE_URL [ONLY]  e.g. http://127.0.0.1:7700
//
// ONLY, a regular expression, keeps the checks whose name matches (a keyplane
// gateway runs the OpenAI ones: `^openai (?!error)`).
//
// Keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY (any non-empty value
// works against the mock). Each check prints "ok - NAME" or
// "FAIL - NAME: why"; the last line is "N passed, M failed" and the exit code
// is 0 only when nothing failed.
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

const base = process.argv[2];
if (!base || !/^https?:\/\//.test(base)) {
  console.error('usage: node sdk_check.mjs BASE_URL   (e.g. http://127.0.0.1:7700)');
  process.exit(2);
}
const root = base.replace(/\/+$/, '');
const only = process.argv[3] ? new RegExp(process.argv[3]) : null;

const openai = new OpenAI({
  baseURL: `${root}/v1`,
  apiKey: process.env.OPENAI_API_KEY || 'sk-sdk-check-openai',
  maxRetries: 0,
  timeout: 15000,
});
const anthropic = new Anthropic({
  // A keyplane gateway serves Anthropic's API under /anthropic.
  baseURL: process.env.ANTHROPIC_BASE_URL || root,
  apiKey: process.env.ANTHROPIC_API_KEY || 'sk-ant-sdk-check',
  maxRetries: 0,
  timeout: 15000,
});

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function assertUsage(u, inName, outName, what) {
  assert(u && typeof u === 'object', `${what}: no usage object`);
  assert(Number.isInteger(u[inName]) && u[inName] > 0, `${what}: usage.${inName} is ${u[inName]}`);
  assert(Number.isInteger(u[outName]) && u[outName] > 0, `${what}: usage.${outName} is ${u[outName]}`);
}

const messages = [{ role: 'user', content: 'Say something deterministic.' }];

const checks = {
  async 'openai chat completion'() {
    const r = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 5 });
    assert(r.object === 'chat.completion', `object is ${r.object}`);
    assert(r.model === 'gpt-4o-mini', `model is ${r.model}`);
    const text = r.choices[0]?.message?.content;
    assert(typeof text === 'string' && text.length > 0, 'no message content');
    assert(r.choices[0].finish_reason === 'length', `finish_reason ${r.choices[0].finish_reason}`);
    assertUsage(r.usage, 'prompt_tokens', 'completion_tokens', 'chat');
    assert(r.usage.completion_tokens === 5, `completion_tokens ${r.usage.completion_tokens}, want 5`);
    assert(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'total_tokens');
  },

  async 'openai chat stream with include_usage'() {
    const whole = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages });
    const stream = await openai.chat.completions.create({
      model: 'gpt-4o-mini',
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      assert(chunk.object === 'chat.completion.chunk', `chunk object ${chunk.object}`);
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert(chunks > 2, `only ${chunks} chunks`);
    assert(text === whole.choices[0].message.content, `streamed text "${text}" differs`);
    assertUsage(usage, 'prompt_tokens', 'completion_tokens', 'stream');
    assert(usage.completion_tokens === whole.usage.completion_tokens, 'stream usage differs');
  },

  async 'openai chat stream helper (finalChatCompletion)'() {
    const runner = openai.chat.completions.stream({ model: 'gpt-4o', messages, max_tokens: 3 });
    const final = await runner.finalChatCompletion();
    assert(final.choices[0].message.content === 'mock0 mock1 mock2', `final "${final.choices[0].message.content}"`);
  },

  async 'openai embeddings'() {
    const input = ['first text', 'second text'];
    const r = await openai.embeddings.create({ model: 'text-embedding-3-small', input });
    assert(r.data.length === 2, `${r.data.length} embeddings`);
    for (const e of r.data) {
      assert(Array.isArray(e.embedding) && e.embedding.length === 8, 'embedding is not 8 numbers');
      assert(e.embedding.every((x) => typeof x === 'number' && Number.isFinite(x)), 'non-numbers');
    }
    assert(r.usage.prompt_tokens > 0 && r.usage.total_tokens === r.usage.prompt_tokens, 'usage');
    // The SDK asks for base64 by default and decodes it: it must match floats.
    const f = await openai.embeddings.create({ model: 'text-embedding-3-small', input, encoding_format: 'float' });
    assert(JSON.stringify(f.data[1].embedding) === JSON.stringify(r.data[1].embedding), 'base64 != float');
  },

  async 'openai models.list'() {
    const ids = [];
    for await (const m of openai.models.list()) ids.push(m.id);
    for (const want of ['gpt-4o-mini', 'gpt-4o', 'text-embedding-3-small']) {
      assert(ids.includes(want), `${want} missing from ${ids.join(',')}`);
    }
  },

  async 'openai responses'() {
    const r = await openai.responses.create({ model: 'gpt-4o', input: 'hello', instructions: 'be brief' });
    assert(r.object === 'response' && r.status === 'completed', `object ${r.object} status ${r.status}`);
    assert(typeof r.output_text === 'string' && r.output_text.startsWith('mock0'), `output_text "${r.output_text}"`);
    assertUsage(r.usage, 'input_tokens', 'output_tokens', 'responses');
  },

  async 'openai responses stream'() {
    const stream = await openai.responses.create({ model: 'gpt-4o', input: 'hello', stream: true });
    let text = '';
    let completed = null;
    for await (const ev of stream) {
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') completed = ev.response;
    }
    assert(completed, 'no response.completed event');
    const final = completed.output?.[0]?.content?.[0]?.text;
    assert(text === final, `deltas "${text}" != final output "${final}"`);
    assertUsage(completed.usage, 'input_tokens', 'output_tokens', 'responses stream');
  },

  // Through a keyplane gateway, with OPENAI_BUDGET_KEY a token whose hard
  // budget is spent: the SDK, left to retry 429s (its default, 2 retries),
  // must not retry this one (x-should-retry: false). The caller counts the
  // calls that reached the gateway.
  async 'openai budget refusal is not retried'() {
    if (!process.env.OPENAI_BUDGET_KEY) return;
    const client = new OpenAI({
      baseURL: `${root}/v1`, apiKey: process.env.OPENAI_BUDGET_KEY, maxRetries: 2, timeout: 15000,
    });
    try {
      await client.chat.completions.create({ model: 'gpt-4o-mini', messages, max_tokens: 5 });
    } catch (err) {
      assert(err instanceof OpenAI.RateLimitError, `got ${err.constructor.name}: ${err.message}`);
      assert(err.code === 'budget_exceeded', `code ${err.code}`);
      assert(err.headers.get('x-keyplane-budget'), 'no X-Keyplane-Budget header');
      return;
    }
    throw new Error('no error raised');
  },
  async 'openai error shape (429 rate limit)'() {
    try {
      await openai.chat.completions.create(
        { model: 'gpt-4o-mini', messages },
        { headers: { 'X-Mock-Fault': '429:retry_after=3' } },
      );
    } catch (err) {
      assert(err instanceof OpenAI.RateLimitError, `got ${err.constructor.name}: ${err.message}`);
      assert(err.code === 'rate_limit_exceeded', `code ${err.code}`);
      assert(err.headers.get('retry-after') === '3', `retry-after ${err.headers.get('retry-after')}`);
      return;
    }
    throw new Error('no error raised');
  },

  async 'anthropic messages'() {
    const r = await anthropic.messages.create({
      model: 'claude-3-5-haiku-latest',
      max_tokens: 64,
      system: 'Be brief.',
      messages,
    });
    assert(r.type === 'message' && r.role === 'assistant', `type ${r.type} role ${r.role}`);
    assert(r.model === 'claude-3-5-haiku-latest', `model ${r.model}`);
    assert(r.content[0]?.type === 'text' && r.content[0].text.length > 0, 'no text block');
    assert(r.stop_reason === 'end_turn', `stop_reason ${r.stop_reason}`);
    assertUsage(r.usage, 'input_tokens', 'output_tokens', 'messages');
  },

  async 'anthropic messages stream'() {
    const stream = anthropic.messages.stream({ model: 'claude-3-5-haiku-latest', max_tokens: 4, messages });
    let text = '';
    stream.on('text', (t) => {
      text += t;
    });
    const final = await stream.finalMessage();
    assert(text === 'mock0 mock1 mock2 mock3', `streamed "${text}"`);
    assert(final.content[0].text === text, 'final message text differs');
    assert(final.stop_reason === 'max_tokens', `stop_reason ${final.stop_reason}`);
    assertUsage(final.usage, 'input_tokens', 'output_tokens', 'final message');
    assert(final.usage.output_tokens === 4, `output_tokens ${final.usage.output_tokens}`);
  },

  async 'anthropic error shape (529 overloaded)'() {
    try {
      await anthropic.messages.create(
        { model: 'claude-3-5-haiku-latest', max_tokens: 8, messages },
        { headers: { 'X-Mock-Fault': '529' } },
      );
    } catch (err) {
      assert(err instanceof Anthropic.APIError && err.status === 529, `got ${err.constructor.name} ${err.status}`);
      assert(err.error?.error?.type === 'overloaded_error', `type ${JSON.stringify(err.error)}`);
      return;
    }
    throw new Error('no error raised');
  },
};

let passed = 0;
let failed = 0;
for (const [name, fn] of Object.entries(checks)) {
  if (only && !only.test(name)) continue;
  try {
    await fn();
    passed++;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed++;
    console.log(`FAIL - ${name}: ${err && err.message ? err.message : err}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
