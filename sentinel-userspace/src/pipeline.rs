//! The capture pipeline after the capture source: TCP reassembly, then HTTP, then transactions.
//! Source-agnostic: the live ring buffer consumer and `sentinel replay` both push
//! [`Segment`]s in capture order and take the [`Transaction`]s that come out.

use serde::Serialize;

use crate::{
    capture::Segment,
    http::{HttpHandler, HttpSettings, HttpStats, Transaction},
    reassembly::{Reassembler, ReassemblyStats, Settings},
};

/// Limits of every stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineSettings {
    /// Reassembly limits.
    pub reassembly: Settings,
    /// HTTP limits.
    pub http: HttpSettings,
}

/// Counters of every stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PipelineStats {
    /// Reassembly.
    pub reassembly: ReassemblyStats,
    /// HTTP.
    pub http: HttpStats,
}

/// Segments in, transactions out.
pub struct Pipeline {
    r: Reassembler<HttpHandler>,
}

impl Pipeline {
    /// A pipeline with these limits.
    pub fn new(settings: PipelineSettings) -> Self {
        Self {
            r: Reassembler::new(HttpHandler::new(settings.http), settings.reassembly),
        }
    }

    /// Feeds one segment (in capture order).
    pub fn push(&mut self, seg: Segment) {
        self.r.push(seg);
    }

    /// Moves capture time on without a segment (live capture, on a timer): idle flows close and
    /// old holes become gaps.
    pub fn advance(&mut self, now_ns: u64) {
        self.r.advance(now_ns);
    }

    /// Ends the input: every flow is closed and what it held is parsed.
    pub fn finish(&mut self) {
        self.r.finish();
    }

    /// Transactions completed since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Transaction> {
        self.r.handler().out.drain(..)
    }

    /// True when transactions are waiting in [`Pipeline::drain`].
    pub fn has_output(&self) -> bool {
        !self.r.handler_ref().out.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            reassembly: self.r.stats(),
            http: self.r.handler_ref().stats().clone(),
        }
    }
}
