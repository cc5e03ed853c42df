// SPDX-License-Identifier: MIT OR Apache-2.0
//! Placeholder: the lead is writing the model here.
