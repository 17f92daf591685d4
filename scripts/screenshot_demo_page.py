#!/usr/bin/env python
"""Screenshot the demo page (demo/app.py) as a user sees it: open it in headless Chromium, upload
an image, wait for the overlay and the legend, save a PNG of the whole page.

    python demo/app.py &                       # or: make demo-web
    python scripts/screenshot_demo_page.py --image demo/examples/shapes_val_000002.png \\
        --task all --output docs/demo_page.png [--url http://127.0.0.1:7860/]

Drives Debian's ``chromium`` (scripts/setup_env.sh installs it) through Playwright. The browser
test (tests/test_web_demo.py) uses :func:`segment_in_page` too.
"""
import argparse
import shutil
import sys

UPLOAD = "#upload input[type=file]"


def segment_in_page(page, image: str, task: str = "", timeout_ms: int = 120_000) -> None:
    """Upload ``image`` on an open demo page (choosing ``task`` first, if given) and wait until
    the legend and the overlay of its result are shown."""
    page.wait_for_selector(UPLOAD, state="attached", timeout=timeout_ms)
    if task:
        page.get_by_label(task, exact=True).check()
    page.set_input_files(UPLOAD, image)
    page.wait_for_selector("#legend tr.segment", timeout=timeout_ms)
    page.wait_for_selector("#overlay img", timeout=timeout_ms)


def launch_chromium(playwright):
    """Headless Debian Chromium (Playwright's own browser download is not used)."""
    path = shutil.which("chromium")
    if path is None:
        raise FileNotFoundError("chromium is not on the PATH: scripts/setup_env.sh installs it "
                                "(apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--image", required=True)
    ap.add_argument("--task", default="", help="semantic, instance, panoptic or all (default: the page's)")
    ap.add_argument("--output", required=True, help="the PNG to write")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args(argv)

    from playwright.sync_api import Error, sync_playwright

    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(args.url)
            segment_in_page(page, args.image, args.task)
            page.screenshot(path=args.output, full_page=True)
            browser.close()
    except (Error, OSError) as e:
        print(f"screenshot_demo_page: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
