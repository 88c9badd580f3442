"""The quality study (docs/quality.md): `study` trains PHOTON and FLOP-matched Llamas on the same bytes and reports
the quality/efficiency frontier; `probe` follows one short run closely (gradient and activation scales)."""
