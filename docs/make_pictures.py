"""Draw every example picture that docs/pictures.md shows, into a folder (default: docs/images).

    python docs/make_pictures.py            # refresh docs/images
    python docs/make_pictures.py /tmp/pics  # anywhere else

Needs the `[plot]` extra (matplotlib). The pictures are drawn through the same functions as the commands
`rf --plot`, `compare --plot` and `summary --format html` use. The ERF uses random weights (seed 0) and 4 samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

from resnet_inspect.capture.loader import load_model
from resnet_inspect.pipeline.build import capture_model, summary_from_capture
from resnet_inspect.pipeline.compare import compare, family_models
from resnet_inspect.pipeline.rf import load_rf_model, rf_report
from resnet_inspect.render.plot import compare_picture, rf_picture
from resnet_inspect.render.svg import bar_chart_svg, fields_svg
from resnet_inspect.report.rf import RfReport


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, bytes | str] = {}

    # rf resnet18 --plot rf_resnet18.png
    model, name = load_rf_model("resnet18", 3, None, real=False)
    pictures["rf_resnet18.png"] = rf_picture(rf_report(model, name, (224, 224)), "png")

    # rf resnet20 --erf --erf-samples 4 --plot rf_erf_resnet20.png
    model, name = load_rf_model("resnet20", 3, None, real=True)
    pictures["rf_erf_resnet20.png"] = rf_picture(rf_report(model, name, (32, 32), erf=True, erf_samples=4), "png")

    # compare --family imagenet --plot compare_depth.png
    pictures["compare_depth.png"] = compare_picture(compare(family_models("imagenet")), "png")

    # compare resnet18 resnet50 -i 128,224,320 --plot compare_sizes.png
    pictures["compare_sizes.png"] = compare_picture(compare(["resnet18", "resnet50"], [(128, 128), (224, 224),
                                                                                       (320, 320)]), "png")

    # summary resnet50 --format html -o resnet50_report.html, and its two inline pictures
    from resnet_inspect.render.html import stage_costs

    network, name = load_model("resnet50")
    summary = summary_from_capture(capture_model(network, (224, 224), 1, 3, name), model=network)
    assert summary.fields is not None
    pictures["html_fields_resnet50.svg"] = fields_svg(RfReport(name, summary.capture.input_shape,
                                                               summary.fields).to_dict())
    pictures["html_stages_resnet50.svg"] = bar_chart_svg(stage_costs(summary.to_dict()))
    pictures["resnet50_report.html"] = summary.to_html()

    for file_name, content in pictures.items():
        path = folder / file_name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "images")
