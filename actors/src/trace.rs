//! One trace per proposal across nodes: the W3C trace context of the caller's span travels with
//! the proposal (in [`crate::Propose`], in a forward to the leader, then in the log entry's
//! context after its fixed 24-byte prefix), and every node that appends, persists or applies the
//! entry opens its span as a child of it (persisting a batch of entries links to each).
//!
//! Without the `otel` feature nothing is captured ([`TraceContext::current`] is `None`), no
//! entry grows, and adopting a parent does nothing. With it, spans are `tracing` spans bridged to
//! OpenTelemetry by `tracing-opentelemetry`; the facade sets up the exporter. Nodes that do not
//! understand the bytes after the prefix ignore them.

use std::sync::atomic::{AtomicU32, Ordering};

use rkyv::{Archive, Deserialize, Serialize};

/// The share of new traces to record, as a fraction of `u32::MAX` (default: all, and the
/// subscriber decides).
static SAMPLING: AtomicU32 = AtomicU32::new(u32::MAX);

/// Records this share of new proposal traces (0.0 to 1.0); a proposal made inside a sampled
/// span is always traced. The exporter's setup calls it; the decision is made before any span
/// exists, so an unsampled proposal costs one random draw.
pub fn set_sampling(ratio: f64) {
    let share = (ratio.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
    SAMPLING.store(share, Ordering::Relaxed);
}

/// Whether a proposal made now starts (or continues) a trace: always `false` without the
/// `otel` feature.
pub fn sample_proposal() -> bool {
    #[cfg(feature = "otel")]
    {
        let share = SAMPLING.load(Ordering::Relaxed);
        share == u32::MAX
            || (share > 0 && rand::random::<u32>() < share)
            || TraceContext::current().is_some()
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = &SAMPLING;
        false
    }
}

/// The tag of a trace context in an entry's context (after the proposal's 24-byte identity).
const TAG: u8 = 1;
/// Bytes of the proposal identity at the head of an entry's context.
const IDENTITY: usize = 24;

/// A W3C trace context (traceparent version 0): whose span a proposal was made in.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The parent span.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Bytes it adds to an entry's context.
    pub const ENCODED_LEN: usize = 1 + 16 + 8 + 1;

    /// The context of the current `tracing` span, if it is recorded by OpenTelemetry and
    /// sampled (always `None` without the `otel` feature).
    pub fn current() -> Option<Self> {
        #[cfg(feature = "otel")]
        {
            otel::current()
        }
        #[cfg(not(feature = "otel"))]
        {
            None
        }
    }

    /// Appends it to an entry context that starts with the proposal's identity.
    pub fn append_to(&self, context: &mut Vec<u8>) {
        context.push(TAG);
        context.extend_from_slice(&self.trace_id);
        context.extend_from_slice(&self.span_id);
        context.push(self.flags);
    }

    /// The trace context an entry's context carries after the proposal's identity, if any.
    pub fn from_entry_context(context: &[u8]) -> Option<Self> {
        let rest = context.get(IDENTITY..)?;
        if rest.len() < Self::ENCODED_LEN || rest[0] != TAG {
            return None;
        }
        Some(Self {
            trace_id: rest[1..17].try_into().ok()?,
            span_id: rest[17..25].try_into().ok()?,
            flags: rest[25],
        })
    }

    /// Makes it the parent of `span` (which must not have been entered yet). Does nothing
    /// without the `otel` feature.
    pub fn adopt(&self, span: &tracing::Span) {
        #[cfg(feature = "otel")]
        otel::adopt(self, span);
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }

    /// For work that carries many entries at once (a group commit, a send to a peer): the
    /// span `open` makes, linked to every traced entry among `contexts` (the entries'
    /// contexts). `None`, and `open` never called, when no entry is traced — always without
    /// the `otel` feature.
    pub fn linked_span<'a>(
        contexts: impl IntoIterator<Item = &'a [u8]>,
        open: impl FnOnce() -> tracing::Span,
    ) -> Option<tracing::Span> {
        if !cfg!(feature = "otel") {
            return None;
        }
        let mut traced = contexts
            .into_iter()
            .filter_map(Self::from_entry_context)
            .peekable();
        traced.peek()?;
        let span = open();
        traced.for_each(|t| t.link(&span));
        Some(span)
    }

    /// Links `span` to it (a span that works for many proposals at once, such as a persist
    /// batch). Does nothing without the `otel` feature.
    pub fn link(&self, span: &tracing::Span) {
        #[cfg(feature = "otel")]
        otel::link(self, span);
        #[cfg(not(feature = "otel"))]
        let _ = span;
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::{
        Context,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    pub(super) fn current() -> Option<TraceContext> {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return None;
        }
        let context = span.context();
        let sc = context.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    fn span_context(t: &TraceContext) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(t.trace_id),
            SpanId::from_bytes(t.span_id),
            TraceFlags::new(t.flags),
            true,
            TraceState::default(),
        )
    }

    pub(super) fn adopt(t: &TraceContext, span: &tracing::Span) {
        let parent = Context::new().with_remote_span_context(span_context(t));
        let _ = span.set_parent(parent);
    }

    pub(super) fn link(t: &TraceContext, span: &tracing::Span) {
        span.add_link(span_context(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_rides_after_the_identity_and_is_ignored_when_absent() {
        let t = TraceContext {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: 1,
        };
        let mut context = vec![0u8; IDENTITY];
        assert_eq!(TraceContext::from_entry_context(&context), None);
        t.append_to(&mut context);
        assert_eq!(context.len(), IDENTITY + TraceContext::ENCODED_LEN);
        assert_eq!(TraceContext::from_entry_context(&context), Some(t));
        // Unknown trailing bytes (another tag, or too short) are not a trace context.
        let mut other = vec![0u8; IDENTITY];
        other.extend_from_slice(&[2; 26]);
        assert_eq!(TraceContext::from_entry_context(&other), None);
        assert_eq!(TraceContext::from_entry_context(&context[..30]), None);
    }
}
