"""The studio's charts: legends under the plot (never on a title), one colour per model, distinct colours per
curve, log axes labelled in full."""

from __future__ import annotations

import plotly.graph_objects as go

from studio import charts
from studio.results_view import heal_figure


def legend_is_below(fig: go.Figure) -> bool:
    legend = fig.layout.legend
    return fig.layout.showlegend is False or (legend.y is not None and legend.y < 0 and legend.yanchor == "top")


def test_legends_sit_under_the_plot_and_models_keep_their_colour():
    bars = charts.grouped_bars(["wikitext2", "ptb"], {"dense": [30.0, 50.0], "pruned": [40.0, 70.0],
                                                      "healed": [35.0, 60.0], "wanda-sp · keep 0.5": [90.0, 99.0]},
                               "Perplexity", "perplexity")
    assert legend_is_below(bars)
    assert [t.marker.color for t in bars.data][:3] == [charts.MODEL_COLOURS[m] for m in ("dense", "pruned", "healed")]
    assert len({t.marker.color for t in bars.data}) == 4
    layers = [{"layer": i, "ffn_channels": 8, "ffn_channels_before": 16, "kv_groups": 1, "kv_groups_before": 2}
              for i in range(3)]
    compare = charts.compare_layers_figure({"grasprune keep 0.5 · aaaaaa": layers, "taylor keep 0.7 · bbbbbb": layers})
    assert legend_is_below(compare) and len({t.marker.color for t in compare.data}) == 2
    assert {t.name for t in compare.data} == {"grasprune keep 0.5 · aaaaaa", "taylor keep 0.7 · bbbbbb"}


def test_heal_curves_have_distinct_colours_and_a_log_axis_labelled_in_full():
    rows = [{"method": "grasprune", "keep_ratio": k, "source": f"heal-{k}/heal.json",
             "points": [{"minutes": 0, "wikitext2": 120.0 * k}, {"minutes": 5, "wikitext2": 70.0 * k}]}
            for k in (0.5, 0.7, 0.8)]
    fig = heal_figure(rows)
    assert legend_is_below(fig)
    assert len({t.line.color for t in fig.data}) == 3
    assert list(fig.layout.yaxis.ticktext) == ["50", "100"]  # 1-2-5 steps within 49-84, each written out


def test_log_ticks_step_1_2_5_across_decades():
    assert charts.log_ticks([30, 300]) == {"tickvals": [20.0, 50.0, 100.0, 200.0], "ticktext": ["20", "50", "100", "200"]}
    assert charts.log_ticks([1500, 90_000])["ticktext"] == ["1,000", "2,000", "5,000", "10,000", "20,000", "50,000",
                                                              "100,000"]
    assert charts.log_ticks([None, -1]) == {}
