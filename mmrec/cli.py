"""The ``mmrec`` command line.

Examples::

    mmrec index build --catalog items.csv --out my_index
    mmrec similar --index my_index --item 1 -k 10
    mmrec search --index my_index --text "space adventure with aliens" --json
    mmrec search --index my_index --queries queries.txt --json      # one query a line, encoded together
    mmrec similar --index my_index --all-items -k 20 --json > related.jsonl
    mmrec index add --index my_index --catalog new_items.csv
    mmrec index update --index my_index --catalog prices.csv   # item_id,price: the prices change, nothing is encoded
    mmrec index remove --index my_index --item 17 42
    mmrec index info --index my_index                   # what the directory holds
    mmrec index rebuild --index my_index --factory auto    # the FAISS index anew from the stored vectors
    mmrec index tune --index my_index --recall 0.99    # IVF / HNSW: the least nprobe / efSearch reaching it
    mmrec train --catalog items.csv --interactions inter.tsv --out model_dir --epochs 50
    mmrec finetune --from model_dir --catalog new_items.csv --interactions new_inter.tsv --out new_dir --lr 0.01
    mmrec recommend --index model_dir --user 42 -k 10 --explain
    mmrec recommend --index model_dir --history 1 50 172 -k 10
    mmrec recommend --index model_dir --user 42 --history 1 50   # a known user's newer items
    mmrec recommend --index model_dir --all-users -k 20 --json > recs.jsonl
    mmrec explain --index model_dir --item 1 -k 5
    mmrec evaluate --index model_dir --interactions inter.tsv --split test
    mmrec serve --index model_dir --port 8000      # GET /recommend?user=42&k=10, /similar, /history, /search, /item, /explain, /health

Errors go to stderr with exit status 1 (2 for a malformed command line); ``--debug`` shows the
traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrec.errors import ConfigError, MMRecError

if TYPE_CHECKING:
    from mmrec.item_index import ItemIndex

logger = logging.getLogger("mmrec")

Handler = Callable[[argparse.Namespace], int]


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def print_results(results, as_json: bool, title_field: str | None = None, out=None) -> None:
    """Print results as JSON (a list of objects) or as a readable table (to ``out``, default stdout)."""
    out = out or sys.stdout
    if as_json:
        json.dump([r.to_dict() for r in results], out, ensure_ascii=False, indent=1)
        out.write("\n")
        return
    if not results:
        out.write("(no results)\n")
        return
    from mmrec.display import display_width, one_line, pad, visible

    ids = [visible(str(r.item_id)) for r in results]  # ("a\tb" and "a b" stay two ids)
    w = max(7, *(display_width(i) for i in ids))  # (as a terminal shows them: a CJK character takes two columns)
    # (rstrip: without a title field, no blank column of trailing spaces)
    out.write(f"{'rank':>4}  {'score':>7}  {'item_id':<{w}}  {title_field or ''}".rstrip() + "\n")
    for rank, (r, iid) in enumerate(zip(results, ids), 1):
        # a multi-line title stays on its result's line; a terminal escape in it is not obeyed
        label = one_line(r.fields.get(title_field, "") if title_field else "", 70)
        out.write(f"{rank:>4}  {r.score:>7.4f}  {pad(iid, w)}  {label}".rstrip() + "\n")
        if r.explanation is not None:
            from mmrec.explain import why_line

            out.write(f"      why: {why_line(r.explanation)}\n")


# Characters that str.splitlines (and JavaScript) take for line ends but that JSON leaves raw.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(obj) -> str:
    """``obj`` as one line of JSON Lines: non-ASCII kept readable, but the line separators JSON
    allows inside strings escaped, so any line splitter finds one object a line."""
    text = json.dumps(obj, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def print_batches(key: str, queries: Sequence, batches, as_json: bool, title_field: str | None = None) -> None:
    """Results of several queries: JSON Lines (one ``{key: query, "results": [...]}`` object a
    query) or, as tables, each under a ``key query`` line."""
    for query, results in zip(queries, batches):
        if as_json:
            sys.stdout.write(json_line({key: query, "results": [r.to_dict() for r in results]}) + "\n")
        else:
            from mmrec.display import visible

            sys.stdout.write(f"{key.removesuffix('_id')} {visible(str(query))}\n")  # (an escape in an id was obeyed)
            print_results(results, False, title_field)


STREAM_BATCH = 1024  # queries answered, printed and let go at a time by stream_batches


def answer_bar_wanted(quiet: bool, stdout=None, stderr=None) -> bool:
    """Whether an export shows its ``answering`` bar: when the answers go to a file or a pipe and
    the bar to a terminal. Answers printed on the terminal show their own progress, and a bar
    redrawn between them would break their lines; a bar written to a log file is noise."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    return not quiet and stderr.isatty() and not stdout.isatty()


def stream_batches(key: str, queries: Sequence, answer: Callable[[Sequence], list], args: argparse.Namespace,
                   title_field: str | None, unit: str) -> None:
    """:func:`print_batches` over ``answer(chunk)`` for ``STREAM_BATCH`` queries at a time, so an
    export of every user or item holds one chunk's results in memory, not the whole catalog's."""
    from tqdm.auto import tqdm

    with tqdm(total=len(queries), unit=unit, desc="answering", disable=not answer_bar_wanted(args.quiet)) as bar:
        for start in range(0, len(queries), STREAM_BATCH):
            chunk = queries[start : start + STREAM_BATCH]
            print_batches(key, chunk, answer(chunk), args.json, title_field)
            sys.stdout.flush()
            bar.update(len(chunk))


def read_queries(path: Path) -> list[str]:
    """Text queries from a UTF-8 file (a byte-order mark is dropped), one a line; blank lines at
    the end are ignored, a blank line before a query is an error naming it.

    Raises:
        DataError: the file is missing, not UTF-8, has blank lines between queries, or holds none.
    """
    from mmrec.errors import DataError, Problem

    try:
        text = path.read_bytes().decode("utf-8-sig")  # bytes: no universal-newline translation of a lone \r
    except FileNotFoundError:
        raise DataError(path, [Problem(None, None, "file not found")]) from None
    except OSError as e:  # a directory, no permission
        raise DataError(path, [Problem(None, None, f"cannot read it ({e.strerror})")]) from None
    except UnicodeDecodeError as e:
        raise DataError(path, [Problem(None, None, f"not UTF-8 text (byte {e.start})")]) from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # only newlines end a line, as in an editor
    while lines and not lines[-1].strip():
        lines.pop()
    problems = [Problem(n, None, "empty query (one text query a line)") for n, q in enumerate(lines, 1) if not q.strip()]
    if not lines:
        problems.append(Problem(None, None, "no queries (one text query a line)"))
    if problems:
        raise DataError(path, problems)
    return lines


def title_field_of(index) -> str | None:
    from mmrec.explain import title_field

    return title_field(index)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """The feature cache the options ask for (``--no-cache``: none)."""
    from mmrec.item_index import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def _catalog_options(args: argparse.Namespace) -> dict:
    """The catalog-reading options that were given (``load_catalog`` keyword arguments)."""
    given = {k: v for k, v in (("text_fields", args.text_fields), ("image_field", args.image_field),
                               ("image_root", args.image_root)) if v}
    return given | ({} if args.mask_bad_images is None else {"mask_bad_images": args.mask_bad_images})


def _refuse_catalog_options(args: argparse.Namespace, more: dict[str, object] | None = None) -> None:
    """Refuse, without ``--catalog``, the options that read one (those of every catalog command,
    and the command's own in ``more``: option -> whether given): a forgotten ``--catalog`` would
    otherwise go on without the catalog, silently."""
    given = {"--text-fields": args.text_fields, "--image-field": args.image_field, "--image-root": args.image_root,
             # None when not given (--no-mask-bad-images is given too)
             f"--{'' if args.mask_bad_images else 'no-'}mask-bad-images": args.mask_bad_images is not None,
             **(more or {})}
    if args.catalog is None and any(given.values()):
        raise UsageError(f"{', '.join(k for k, v in given.items() if v)} read the catalog: give --catalog too")


def _mask_opt(p: argparse.ArgumentParser, remembered: bool = False) -> None:
    """``--mask-bad-images``; ``remembered``: a command on a directory, which masks as the directory
    was built or trained unless told otherwise (``--no-mask-bad-images``)."""
    what = ("an image that is missing or does not decode leaves its row without an image (listed in skipped.jsonl) "
            "instead of failing the run (or skipping the row, with --skip-invalid); a row left with no content (no "
            "text, and no --features) is still invalid")
    if remembered:
        p.add_argument("--mask-bad-images", action=argparse.BooleanOptionalAction, default=None,
                       help=what + " (default: as the directory was built or trained; index info says which)")
    else:
        p.add_argument("--mask-bad-images", action="store_true", default=None, help=what)


def _training_options(args: argparse.Namespace) -> dict:
    """Keyword arguments ``fit`` and ``finetune`` both take, from the options both commands have."""
    return dict(catalog=args.catalog, features=_features(args), out=args.out, split=args.split,
                rating_threshold=args.rating_threshold, factory=args.factory, overwrite=args.overwrite,
                cache_dir=_cache_dir(args), show_progress=not args.quiet, **_catalog_options(args))


# --- index ---------------------------------------------------------------------------------
def cmd_index_build(args: argparse.Namespace) -> int:
    from mmrec.item_index import ItemIndex

    if args.catalog is None and not args.features:
        raise UsageError("give --catalog, --features NAME=PATH.npy, or both")
    _refuse_catalog_options(args, {"--skip-invalid": args.skip_invalid})
    index = ItemIndex.build(
        args.catalog,
        args.out,
        features=_features(args),
        factory=args.factory,
        text_encoder=args.text_encoder,
        image_encoder=args.image_encoder,
        image_weights=args.image_weights,
        batch_size=args.batch_size,
        max_length=args.max_length,
        cache_dir=_cache_dir(args),
        overwrite=args.overwrite,
        allow_download=args.allow_download,
        show_progress=not args.quiet,
        device=args.device,
        center=args.center,
        text_fields=args.text_fields,
        image_field=args.image_field,
        image_root=args.image_root,
        skip_invalid=args.skip_invalid,
        mask_bad_images=bool(args.mask_bad_images),
    )
    skipped = Path(args.out) / "skipped.jsonl"
    note = f"; skipped rows and left-out images listed in {skipped}" if skipped.exists() else ""
    print(f"built {args.out}: {len(index)} items, dim {index.manifest['dim']}, factory {index.manifest['factory']}{note}")
    return 0


def _open_index(args: argparse.Namespace):
    from mmrec.recommender import Recommender

    return Recommender.load(args.index, show_progress=not args.quiet).items


def _open_recommender(args: argparse.Namespace):
    from mmrec.recommender import Recommender

    return Recommender.load(args.index, show_progress=not args.quiet)


def _catalog_change_opts(p: argparse.ArgumentParser, skip_help: str) -> None:
    """The options ``index add`` and ``index update`` share (after their own)."""
    p.add_argument("--image-root", type=Path, help="base for relative image paths (default: the catalog's folder)")
    _mask_opt(p, remembered=True)
    p.add_argument("--skip-invalid", action="store_true", help=skip_help)
    p.add_argument("--device", default=None, help="torch device the encoders run on: cpu (default), cuda, cuda:N")
    _cache_opts(p)
    _common(p)


def _catalog_change(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``index add`` / ``index update``: the index, opened once the device is checked, and the
    options both pass on."""
    from mmrec.item_index import check_device

    if args.device is not None:
        check_device(args.device)  # before the index is opened
    index = _open_index(args)
    opts = {k: v for k, v in (("image_root", args.image_root), ("skip_invalid", args.skip_invalid)) if v}
    if args.mask_bad_images is not None:  # else as the directory was built or trained
        opts["mask_bad_images"] = args.mask_bad_images
    return index, {"features": _features(args, new=False), "cache_dir": _cache_dir(args), "device": args.device, **opts}


def cmd_index_add(args: argparse.Namespace) -> int:
    index, options = _catalog_change(args)
    n = index.add(args.catalog, **options)
    print(f"added {_items(n)} to {args.index}: {_items(len(index))}")
    return 0


def cmd_index_update(args: argparse.Namespace) -> int:
    from mmrec.item_index import SKIP_REPORT

    index, options = _catalog_change(args)
    done = index.update(args.catalog, add_new=args.add_new, remove_missing=args.remove_missing, dry_run=args.dry_run,
                        **options)
    content = done["content"]
    kept = content - done["moved"]
    detail = (f" ({content:,} with new content" + (f", {kept:,} of them keeping trained vectors" if kept else "") + ")"
              if content else "")
    update, add, remove, skip = (("would update", "add", "remove", "skip") if args.dry_run else
                                 ("updated", "added", "removed", "skipped"))
    added = f", {add} {_items(done['added'])}" if args.add_new else ""
    removed = f", {remove} {_items(done['removed'])}" if args.remove_missing else ""
    unchanged = not (done["updated"] or done["added"] or done["removed"])  # then only skipped.jsonl is written
    rows = f"{done['skipped']:,} invalid row" + ("" if done["skipped"] == 1 else "s")
    skipped = f", {skip} {rows}" + ("" if args.dry_run else f" (listed in {SKIP_REPORT})") if done["skipped"] else ""
    left = len(index) + (done["added"] - done["removed"] if args.dry_run else 0)
    nothing = " (nothing was written)" if args.dry_run else " (the index was not rewritten)" if unchanged else ""
    print(f"{update} {_items(done['updated'])}{detail}, {done['unchanged']:,} unchanged{added}{removed}{skipped} in "
          f"{args.index}: {_items(left)}{nothing}")
    return 0


def _knob(name: str) -> str:
    """A search knob as FAISS (and the README) names it: ``nprobe``, ``efSearch``."""
    return {"ef_search": "efSearch"}.get(name, name)


def _items(n: int) -> str:
    return f"{n:,} item" if n == 1 else f"{n:,} items"


def cmd_index_remove(args: argparse.Namespace) -> int:
    index = _open_index(args)
    n = index.remove(args.item)
    print(f"removed {_items(n)} from {args.index}: {_items(len(index))}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    info = _open_recommender(args).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    users = f", {info['users']:,} users" if info["kind"] == "trained" else ""
    print(f"{args.index}: {info['kind']} directory, {info['items']:,} items{users} "
          f"(format {info['format_version']}, written {info['written']})")
    ix = info["index"]
    knob = next(((k, v) for k, v in ix.items() if k in ("nprobe", "ef_search")), None)
    print(f"  index: {ix['factory']}, dim {ix['dim']}, " + (f"{_knob(knob[0])} {knob[1]}" if knob else "exact search"))
    mods = [f"{mod} (weight {m['weight']}{', centred' if m['centered'] else ''}"
            f"{', masked: no item has it' if m['masked'] else ''})" for mod, m in info["modalities"].items()]
    print(f"  modalities: {', '.join(mods) or 'none (ID only)'}")
    if info["placed_since_build"] and any(m["centered"] for m in info["modalities"].values()):
        again = "index build" if info["kind"] == "content" else "train"
        print(f"  centring: the catalog means of the {'build' if info['kind'] == 'content' else 'training'}; "
              f"{_items(info['placed_since_build'])} placed since by index add / update ({again} again to take "
              "them anew)")
    for mod, spec in info["encoders"].items():
        print(f"  encoder {mod}: {spec.get('model')} ({spec.get('identity', '?')}, {spec.get('dim', '?')}-d)")
    read = info["catalog"]
    if read["text_fields"] or read["image_field"]:  # what `index add` reads from a new catalog
        print(f"  catalog: text from {', '.join(read['text_fields']) or 'no column'}"
              + (f", images from '{read['image_field']}'" if read["image_field"] else "")
              + (" (bad images masked, as --mask-bad-images)" if read["mask_bad_images"] and read["image_field"] else ""))
    training = info.get("training")
    if training:
        metrics = "; ".join(f"{part} " + " ".join(f"{k} {v:.4f}" for k, v in training[part].items())
                            for part in ("valid", "test") if training.get(part)) or "no valid or test metrics"
        print(f"  training: best epoch {training['best_epoch']} of {training['epochs_run']} "
              f"({training['seconds_per_epoch']:.2f} s/epoch); {metrics}")
    if info["kind"] == "trained":
        cfg = info["config"]
        print(f"  model: dim {cfg['dim']}, {cfg['layers']} layers, loss {cfg['loss']}, lr {cfg['lr']}, "
              f"content {'on' if cfg['use_content'] else 'off'}, encoders {cfg['finetune']}"
              + (f"; {info['cold_items']} items held out (cold start)" if info["cold_items"] else ""))
    if info["left_beside"]:
        print(f"  left beside it by an interrupted write: {', '.join(info['left_beside'])} (previous versions: "
              "delete them once you do not need them)")
    return 0


def cmd_index_rebuild(args: argparse.Namespace) -> int:
    index = _open_index(args)
    before = index.manifest["factory"]
    after = index.rebuild(args.factory)
    knob = index.index.knob
    setting = "" if knob is None or after == before else (
        f"; {_knob(knob)} {getattr(index.index, knob)}, the default (`mmrec index tune` sets it for a target recall)")
    print(f"rebuilt {args.index}: {before} -> {after}, {_items(len(index))}{setting}")
    return 0


def cmd_index_tune(args: argparse.Namespace) -> int:
    given = [(name, v) for name, v in (("nprobe", args.nprobe), ("ef_search", args.ef_search)) if v is not None]
    measuring = {o: getattr(args, o) for o in ("recall", "k", "sample", "seed") if getattr(args, o) is not None}
    if given and measuring:  # argparse allows at most one of the knobs
        flags = ", ".join(f"--{o}" if len(o) > 1 else f"-{o}" for o in measuring)
        raise UsageError(f"--{given[0][0].replace('_', '-')} sets the knob without measuring: {flags} "
                         f"would be unused (give one or the other)")
    rec = _open_recommender(args)
    index = rec.items.index
    if given:
        name, value = given[0]
        if index.knob != name:
            has = f"its knob is --{index.knob.replace('_', '-')}" if index.knob else "exact search has no knob"
            raise ConfigError(f"{args.index} is {index.factory}: {has}, not --{name.replace('_', '-')}")
        before = getattr(index, name)
        saved = rec.set_search(value, save=not args.dry_run)
        report = {"factory": index.factory, "knob": name, "before": before, "value": value, "saved": saved}
    else:
        report = rec.tune_search(**measuring, save=not args.dry_run)  # the rest: tune_search's defaults
    if args.json:
        print(json.dumps(report))
        return 0
    where = f"saved to {args.index}" if report["saved"] else "not saved (--dry-run)"
    goal = f"; recall@{report['k']} >= {report['recall']} for {' and '.join(report['sweeps'])}" if "sweeps" in report else ""
    print(f"{report['factory']}: {_knob(report['knob'])} {report['before']} -> {report['value']}{goal}; {where}")
    if "sweeps" in report:
        print(f"{'queries':8} {_knob(report['knob']):>9} {'recall@' + str(report['k']):>10} {'ms/query':>9}")
        for kind, rows in report["sweeps"].items():
            for row in rows:
                print(f"{kind:8} {row['value']:>9} {row['recall']:>10.4f} {row['ms_per_query']:>9.3f}")
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from mmrec.explain import explain_similar

    items = args.item or []  # argparse requires --item or --all-items, not both
    many = args.all_items or len(items) > 1
    if many and args.explain:
        raise UsageError("several items (or --all-items) are answered in batches: --explain takes one --item")
    wanted = _filter_args(args)  # the files are read before the (slower) directory
    index = _open_index(args)
    exclude, only = _resolve_filters(index, wanted)  # once, not per batch
    if many:
        ids = index.ids if args.all_items else [index.resolve_id(i) for i in items]  # every id checked first
        stream_batches("item_id", ids, lambda chunk: index.similar_many(chunk, args.k, by=args.by, exclude=exclude,
                                                                        only=only),
                       args, title_field_of(index), unit="item")
        return 0
    results = index.similar(items[0], args.k, by=args.by, exclude=exclude, only=only)
    if args.explain:
        explain_similar(index, items[0], results)
    print_results(results, args.json, title_field_of(index))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from mmrec.explain import explain_item, format_attention, fused_key

    index = _open_index(args)
    e = explain_item(index, args.item, args.k)
    if args.json:
        print(json.dumps(e.to_dict(), ensure_ascii=False, indent=1))
        return 0
    title = title_field_of(index)
    from mmrec.display import one_line, visible

    print(f"item {visible(str(e.item_id))}  {one_line(e.fields.get(title, '')) if title else ''}".rstrip())
    print(f"attention: {format_attention(e.attention)}")
    for name, results in e.neighbours.items():
        print(f"\n{'fused (the index)' if name == fused_key(index) else name + ' only'}:")
        if results is None:
            print(f"  (this item has no {name})")
        else:
            print_results(results, False, title)
    return 0


def _query_device(args: argparse.Namespace) -> None:
    if args.device is not None:
        from mmrec.item_index import check_device

        check_device(args.device)  # before the directory is opened


def cmd_search(args: argparse.Namespace) -> int:
    _query_device(args)
    texts = read_queries(args.queries) if args.queries is not None else args.text
    wanted = _filter_args(args)
    index = _open_index(args)
    if args.device is not None:
        index.encoders.to(args.device)
    title = title_field_of(index)
    exclude, only = _resolve_filters(index, wanted)
    if args.image is not None:
        key, queries = "image", [str(p) for p in args.image]
        batches = index.search_images(args.image, args.k, exclude=exclude, only=only, by=args.by)
    else:
        key, queries, batches = "query", texts, index.search_texts(texts, args.k, exclude=exclude, only=only,
                                                                   by=args.by)
    if len(queries) == 1 and args.queries is None:
        print_results(batches[0], args.json, title)
    else:  # several queries, or a queries file of any length: one object (or table) a query
        print_batches(key, queries, batches, args.json, title)
    return 0


# --- training ------------------------------------------------------------------------------
def _features_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.npy, got {text!r}")
    return name, Path(path)


class _Once(argparse.Action):
    """An option that may be given once: a second value is a usage error, where argparse kept the
    last one and dropped the first without a word."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"argument {option_string}: given twice; it takes one value")
        setattr(namespace, self.dest, values)


def _features(args: argparse.Namespace, new: bool = True) -> dict[str, Path]:
    """``--features`` as a dict; a name given twice is an error, not the last one silently. Where
    the names are ``new`` ones (a build, train, finetune: not ``index add`` / ``update``, which
    take an existing index's own), a name no modality may have
    (:func:`fusion.model.modality_name_problem`) is refused here, before any encoding."""
    given: dict[str, Path] = {}
    for name, path in args.features or []:
        if name in given:
            raise UsageError(f"--features names '{name}' twice ({given[name]}, {path}): one file a modality")
        if new:
            from fusion.model import modality_name_problem

            if (problem := modality_name_problem(name)) is not None:
                raise UsageError(f"--features {name}={path}: {problem}")
        given[name] = path
    return given


def _check_skip_with_features(args: argparse.Namespace) -> None:
    """``--skip-invalid`` with ``--features`` beside a catalog: options that do not go together."""
    if args.skip_invalid and args.features and args.catalog is not None:
        from mmrec.pipeline import SKIP_WITH_FEATURES

        raise UsageError(SKIP_WITH_FEATURES)


def cmd_train(args: argparse.Namespace) -> int:
    from mmrec.config import TrainConfig, config_from_args
    from mmrec.pipeline import fit

    _check_skip_with_features(args)
    _refuse_catalog_options(args, {
        "--image-weights": args.image_weights, "--allow-download": args.allow_download,
        "--max-length": args.max_length is not None,
        # "none" turns an encoder off, as beside --features alone it is: any other value reads a catalog
        "--text-encoder": args.text_encoder not in (None, "none"),
        "--image-encoder": args.image_encoder not in (None, "none")})
    args.text_encoder = "default" if args.text_encoder is None else args.text_encoder
    args.image_encoder = "default" if args.image_encoder is None else args.image_encoder
    args.max_length = 256 if args.max_length is None else args.max_length
    if args.catalog is None and not args.features:
        if args.use_content is not False:  # (one who turned content off hears from TrainConfig that it is off)
            if args.untrained_via_content:  # (TrainConfig would say "use_content is off", which they never set)
                raise UsageError("--untrained-via-content places items by their content: give --catalog or --features")
            logger.info("no --catalog and no --features: training ID-only LightGCN")
    try:  # an option value TrainConfig refuses is a malformed command line, as argparse's own
        cfg = config_from_args(TrainConfig, args, **({} if args.catalog or args.features else {"use_content": False}))
    except ConfigError as e:
        raise UsageError(str(e)) from None
    rec, result, test = fit(
        args.interactions,
        config=cfg,
        text_encoder=args.text_encoder,
        image_encoder=args.image_encoder,
        image_weights=args.image_weights,
        max_length=args.max_length,
        allow_download=args.allow_download,
        skip_invalid=args.skip_invalid,
        **_training_options(args),
    )
    skipped = Path(args.out) / "skipped.jsonl"
    print_training(args, f"trained {args.out}" + (f" (skipped catalog rows and left-out images listed in {skipped})"
                                                  if skipped.exists() else ""), result, test)
    return 0


def print_training(args: argparse.Namespace, title: str, result, test: dict, *, source: Path | None = None,
                   start_valid: dict | None = None) -> None:
    """The summary of a training run: JSON, or a few readable metric lines."""
    summary = {"out": str(args.out), **({"source": str(source)} if source is not None else {}),
               "best_epoch": result.best_epoch, "seconds_per_epoch": result.seconds_per_epoch,
               **({"start_valid": start_valid} if start_valid is not None else {}),
               "valid": result.best_valid, "test": test, "popularity": result.popularity,
               **({"valid_trained": result.trained_valid} if result.trained_valid is not None else {})}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"{title}: best epoch {result.best_epoch} ({result.seconds_per_epoch:.1f} s/epoch)")
    rows = [("valid before", start_valid or {}), ("valid", result.best_valid),
            ("valid, as trained (before --untrained-via-content)", result.trained_valid or {}), ("test", test),
            ("cold-start test", test.get("cold", {})),
            *((f"{split}, by popularity (for reference)", m) for split, m in result.popularity.items())]
    for name, m in rows:
        if m:
            print(f"  {name}: " + "  ".join(f"{k} {m[k]:.4f}" for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")))


def cmd_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from mmrec.config import ARCHITECTURE, TrainConfig
    from mmrec.transfer import finetune

    _check_skip_with_features(args)
    _refuse_catalog_options(args)
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    for name, value in changes.items():  # a value TrainConfig refuses is a malformed command line, as in train
        if name not in ARCHITECTURE:  # (those must equal the source's: finetune says so)
            try:
                TrainConfig(**{name: value})
            except ConfigError as e:
                raise UsageError(str(e)) from None
    rec, result, test = finetune(
        args.source,
        args.interactions,
        config=changes,
        keep_users=args.keep_users,
        ignore=args.ignore_modality or (),
        skip_invalid=args.skip_invalid,
        **_training_options(args),
    )
    report = json.loads((Path(args.out) / "train_report.json").read_text())
    skipped = Path(args.out) / "skipped.jsonl"
    print_training(args, f"fine-tuned {args.source} into {args.out}" + (
        f" (skipped catalog rows and left-out images listed in {skipped})" if skipped.exists() else ""), result, test,
        source=args.source, start_valid=report.get("start_valid"))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    users = args.user or []
    if not users and args.history is None and not args.all_users:
        raise UsageError("give --user ID, --history ITEM [ITEM ...], or both (a known user's newer items)")
    if args.all_users and (users or args.history is not None):
        raise UsageError("--all-users takes no --user or --history")
    many = args.all_users or len(users) > 1
    if many and (args.history is not None or args.explain or args.explain_items is not None or args.diversity):
        raise UsageError("several users (or --all-users) are recommended for in batches: --history, --explain, "
                          "--explain-items and --diversity take one --user")
    from mmrec.explain import DEFAULT_HISTORY

    if args.explain_items is not None and not args.explain:
        raise UsageError("--explain-items sets how many history items --explain names: give --explain too")
    explain_items = DEFAULT_HISTORY if args.explain_items is None else args.explain_items
    if args.method != "auto" and args.history is None:
        raise UsageError("--method applies to --history only (a known user has a trained vector)")
    wanted = _filter_args(args)  # the files are read before the (slower) directory
    rec = _open_recommender(args)
    if not rec.trained and args.history is None:  # before any user lookup (--all-users looks up none)
        raise MMRecError("this directory holds a content index, not a trained model: run `mmrec train` first, "
                         "or place a user by their items with --history")
    title = title_field_of(rec.items)
    exclude, only = _resolve_filters(rec.items, wanted)  # once, not per batch
    if many:
        users = list(rec.user_ids) if args.all_users else [rec.user_ids[rec.user_index(u)] for u in users]
        stream_batches("user_id", users, lambda chunk: rec.recommend_many(chunk, args.k, exclude=exclude, only=only,
                                                                          exclude_known=not args.include_known),
                       args, title, unit="user")
        return 0
    user = users[0] if users else None
    if args.history is not None:
        results = rec.recommend_history(args.history, args.k, user=user, method=args.method,
                                        exclude_history=not args.include_known, explain=args.explain,
                                        explain_items=explain_items, diversity=args.diversity, exclude=exclude,
                                        only=only)
    else:
        results = rec.recommend(user, args.k, exclude_known=not args.include_known, explain=args.explain,
                                history=explain_items, diversity=args.diversity, exclude=exclude, only=only)
    print_results(results, args.json, title)
    return 0


def _id_list(ids: list[str] | None, paths: list[Path] | None, option: str) -> list[str]:
    """``ids`` and the lines of the files ``paths`` (the option repeated; blank lines skipped), together."""
    ids = list(ids or [])
    for path in paths or []:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no part of the first id
        except OSError as e:
            raise ConfigError(f"{option} {path}: cannot read it ({e.strerror})") from None
        except UnicodeDecodeError:  # Notepad's "Unicode" is UTF-16
            from mmrec.errors import utf8_problem

            problem = utf8_problem(path)
            raise ConfigError(f"{option} {path}: {problem.message if problem else 'not UTF-8 text'}") from None
        ids += [line.strip() for line in text.splitlines() if line.strip()]
    return ids


def _where_arg(text: str) -> str:
    """A ``--where`` condition, checked and kept as written (``ItemIndex.matching`` reads it)."""
    from mmrec.item_index import split_where

    if split_where(text) is None:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, FIELD!=VALUE or FIELD>=N (>, <=, <), got {text!r}")
    return text


def _filter_args(args: argparse.Namespace) -> tuple[list[str], list[str] | None, list[str]]:
    """The filter options as given: ``--exclude`` ids (and file), ``--only`` ids (and file;
    ``None`` when neither is given) and the ``--where`` conditions."""
    exclude = _id_list(args.exclude, args.exclude_file, "--exclude-file")
    only = None
    if args.only is not None or args.only_file is not None:
        only = _id_list(args.only, args.only_file, "--only-file")
    where = list(args.where or [])
    return exclude, only, where


def _resolve_filters(index: ItemIndex, wanted: tuple[list[str], list[str] | None, list[str]]
                     ) -> tuple[set, set | None]:
    """The excluded ids and the candidates (``--only`` ids that match ``--where``; ``None``:
    every item) of an opened index."""
    from mmrec.item_index import describe_where, split_where

    exclude, only, where = wanted
    excluded, allowed = index.filters(exclude, only, where)
    if allowed is not None:
        shown = describe_where([split_where(text) for text in where])
        if not allowed:
            logger.warning("no item of the index is a candidate (%s): nothing to return",
                           " and ".join(x for x in ("--only" if only is not None else "", shown) if x))
        else:
            logger.info("%d of the %d items are candidates", len(allowed), len(index))
    return excluded, allowed


def _filter_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exclude", nargs="+", action="extend", metavar="ID",
                   help="item ids never to return (a business rule: out of stock, already shown); ids not in the "
                        "index are ignored; k results still come back while k remain")
    p.add_argument("--exclude-file", type=Path, action="append", metavar="FILE",
                   help="the same, one id a line (UTF-8); repeat it for several files")
    p.add_argument("--only", nargs="+", action="extend", metavar="ID",
                   help="return only these item ids (candidates: a category, a region's stock); ids not in the "
                        "index are ignored; k results still come back while k candidates remain")
    p.add_argument("--only-file", type=Path, action="append", metavar="FILE",
                   help="the same, one id a line (UTF-8); repeat it for several files")
    p.add_argument("--where", type=_where_arg, action="append", metavar="FIELD=VALUE",
                   help="return only items whose display field FIELD is VALUE or, for a field of |-separated "
                        "values (genres), lists VALUE (case counts), or reads as the same number; FIELD= (no "
                        "value): items without the field; FIELD!=VALUE: the others; FIELD>=N, >, <=, "
                        "<: the field read as a number; repeat it: a field's = values are alternatives, every "
                        "other condition must hold too, and --only narrows it further")


def cmd_serve(args: argparse.Namespace) -> int:
    from mmrec.server import ROUTES, RecommenderServer, manifest_stamp

    _query_device(args)
    stamp = manifest_stamp(args.index)  # before loading: a change made while it loads is seen
    rec = _open_recommender(args)
    try:  # the server readies the directory: no progress bars, encoders on --device
        server = RecommenderServer(rec, args.host, args.port, reload_every=1.0 if args.reload else None,
                                   device=args.device, loaded_stamp=stamp, warm=args.warm)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    if args.warm:
        server.warm_up()  # loaded now, not by the first text query
    host, port = server.server_address[:2]
    kind = "trained model" if rec.trained else "content index"
    where = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
    formats = [(h, h.formatter) for h in logging.getLogger().handlers]
    for handler, _ in formats:  # a server's log lines carry their time
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    stopping = threading.Event()
    stoppers: list[threading.Thread] = []  # joined before the process ends: a daemon thread still waking
    # when the interpreter finalizes was unwound by force, and the process aborted ("terminate called
    # without an active exception", as a SIGTERM under load did)

    def stop(signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM (docker stop, systemd): serve_forever returns at its next poll. (A
        KeyboardInterrupt, raised wherever the main thread was, could land between accepting a
        connection and handing it to its thread, which left it unanswered.) A second one stops
        the wait for the answers being written."""
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        stoppers.append(threading.Thread(target=server.shutdown, daemon=True))  # (it waits for serve_forever:
        stoppers[-1].start()  # not from here, the thread serve_forever runs in)

    # (before the line that says it is ready: a SIGTERM sent on reading it killed the process outright;
    # a SIGINT the process was started ignoring, as a shell's `&` does, stays ignored)
    ours = [signal.SIGTERM] + [signal.SIGINT] * (signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    previous = {number: signal.signal(number, stop) for number in ours}
    try:
        print(f"serving {args.index} ({kind}, {len(rec.items)} items, {len(rec.user_ids)} users) at "
              f"http://{where}:{port}  routes: /health {' '.join(ROUTES)}  (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # a SIGINT handler not ours (a program that runs this command) raised it
            pass
        left = server.drain(accept=True)  # the answers being written finish; new requests get 503
        if left:
            logger.warning("stopping with %d request(s) still being answered after 30 s", left)
        logger.info("stopped")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for stopper in stoppers:  # (serve_forever has returned: its shutdown() returns at once)
            stopper.join()
        server.server_close()  # (connections still queued get their 503 first)
        for handler, formatter in formats:
            handler.setFormatter(formatter)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmrec.pipeline import evaluate_directory

    if args.cold_start and (args.split is not None or args.mask is not None):
        raise UsageError("--cold-start ranks the held-out items for every user who had one, in any split, with every "
                         "other known item masked: --split and --mask do not apply")
    rec = _open_recommender(args)
    metrics = evaluate_directory(rec, args.interactions, split=args.split, mask=args.mask, how=args.split_rule,
                                 cold_start=args.cold_start, batch_size=args.batch_size,
                                 show_progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        what = "cold-start items" if metrics.get("cold_start") else f"{metrics['split']}, mask={metrics['mask']}"
        print(f"{args.index} on {args.interactions} [{what}, {int(metrics['num_users'])} users]")
        for k in sorted(m for m in metrics if "@" in m):
            print(f"  {k:<14} {metrics[k]:.4f}")
        if metrics.get("users_skipped") or metrics.get("rows_skipped"):
            print(f"  skipped: {metrics.get('rows_skipped', 0)} rows of items not in the index; "
                  f"{metrics.get('users_skipped', 0)} users ({metrics.get('users_unknown', 0)} unknown to the model, "
                  f"{metrics.get('users_only_removed_items', 0)} with only such rows)")
        if metrics.get("rows_invalid_skipped"):  # (said by a warning alone, which -q hides)
            print(f"  skipped: {metrics['rows_invalid_skipped']} invalid rows (the model was trained with --skip-invalid)")
        if metrics.get("rows_of_held_out_items"):
            print(f"  left out: {metrics['rows_of_held_out_items']} rows of the items training held out "
                  "(evaluated apart: --cold-start)")
    return 0


# --- parser --------------------------------------------------------------------------------
def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie in 0-65535, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _seed(text: str) -> int:
    value = _positive_int(text, 0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**32), got {value}")
    return value


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _fraction(text: str, low_open: bool = False) -> float:
    """A number in [0, 1] (``(0, 1]`` with ``low_open``)."""
    value = _finite(text)
    if not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must lie in {'(0, 1]' if low_open else '[0, 1]'}, got {text}")
    return value


def _recall(text: str) -> float:
    return _fraction(text, low_open=True)


def _max_length(text: str) -> int:
    return _positive_int(text, 2)  # room for the tokenizer's special tokens


class UsageError(ConfigError):
    """A malformed command line the option parser cannot see (options that do not go together):
    exit status 2, as for the parser's own errors."""


def _user_error(e: BaseException) -> bool:
    """A failure whose message says it all (bad input, a damaged directory): no traceback hint."""
    if isinstance(e, (MMRecError, OSError)):
        return True
    kinds = [getattr(sys.modules.get(module), name, None)  # only when loaded: never import for this
             for module, name in (("index.persist", "IndexFormatError"), ("encoders.image", "ImageDecodeError"))]
    return any(kind is not None and isinstance(e, kind) for kind in kinds)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")


def _query_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, type=Path, help="index or trained directory")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cache_opts(p: argparse.ArgumentParser) -> None:
    cache = p.add_mutually_exclusive_group()  # one or the other: given both, which would win is a guess
    cache.add_argument("--cache-dir", type=Path, help="feature cache (default $MMREC_CACHE_DIR or ~/.cache/mmrec/features)")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrec", description="Multimodal recommender: index, search, recommend.")
    # Also before the command (`mmrec -q index build ...`); own names, as a subcommand's defaults would reset them.
    parser.add_argument("--debug", dest="debug_all", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", dest="quiet_all", action="store_true", help="no progress bars or info logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    idx = sub.add_parser("index", help="build or change an item index")
    isub = idx.add_subparsers(dest="index_command", required=True, metavar="INDEX_COMMAND")
    b = isub.add_parser("build", help="encode a catalog and build its FAISS index")
    b.add_argument("--catalog", type=Path,
                   help="items file: .csv .tsv .json .jsonl .parquet with item_id (optional with --features)")
    b.add_argument("--features", type=_features_arg, action="append", metavar="NAME=PATH.npy",
                   help="precomputed features, one row per catalog row (without a catalog, item i is row i), "
                        "beside or instead of the encoded text and images (repeatable)")
    b.add_argument("--out", required=True, type=Path, help="index directory to create")
    b.add_argument("--text-fields", type=_csv_list, action="extend",
                   help="comma-separated text columns (default: every column of text: strings, lists of strings)")
    b.add_argument("--image-field", help="column of image paths (default: 'image' if present)")
    b.add_argument("--image-root", type=Path, help="base for relative image paths (default: the catalog's folder)")
    _mask_opt(b)
    b.add_argument("--factory", default="auto", help="FAISS factory string or 'auto' (default)")
    b.add_argument("--text-encoder", default="default",
                   help="'default' (packaged MiniLM), 'none' (text not encoded), a Hugging Face model dir, or a Hub "
                        "name with --allow-download")
    b.add_argument("--allow-download", action="store_true",
                   help="let --text-encoder name a Hugging Face Hub model to download (off: nothing is downloaded)")
    b.add_argument(
        "--image-encoder", default="default",
        help="'default' (packaged EfficientNet-Lite0), 'none', a torchvision name, or a Hugging Face model dir",
    )
    b.add_argument("--image-weights", type=Path, help="state-dict file for a torchvision image backbone")
    b.add_argument("--batch-size", type=_positive_int,
                   help="encoder batch size (default: the encoder's, 64 texts / 32 images)")
    b.add_argument("--max-length", type=_max_length, default=256, help="text truncation in tokens (default 256)")
    b.add_argument("--device", default="cpu", help="torch device the encoders run on: cpu (default), cuda, cuda:N")
    b.add_argument("--skip-invalid", action="store_true", help="skip bad rows (reported in OUT/skipped.jsonl)")
    b.add_argument("--no-center", dest="center", action="store_false",
                   help="score plain encoder cosines (default: cosines measured from each modality's catalog mean)")
    b.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _cache_opts(b)
    _common(b)
    b.set_defaults(func=cmd_index_build)

    a = isub.add_parser("add", help="encode and add new items (only the new rows are encoded)")
    a.add_argument("--index", required=True, type=Path, help="index or trained directory to add to")
    a.add_argument("--catalog", required=True, type=Path, help="file of new items (same columns as the catalog)")
    a.add_argument("--features", type=_features_arg, action="append", metavar="NAME=PATH.npy",
                   help="precomputed features of the new items, one row per catalog row, for the index's "
                        "precomputed modalities (repeatable; one left out is masked for the new items)")
    _catalog_change_opts(a, "skip bad rows (listed in INDEX/skipped.jsonl) instead of failing")
    a.set_defaults(func=cmd_index_add)

    u = isub.add_parser("update", help="change items already in the index: the file's columns replace their display "
                                       "fields, content is encoded again only where it changed")
    u.add_argument("--index", required=True, type=Path, help="index or trained directory to change")
    u.add_argument("--catalog", required=True, type=Path,
                   help="file of changed items with an item_id column; columns it lacks stay as they were")
    u.add_argument("--features", type=_features_arg, action="append", metavar="NAME=PATH.npy",
                   help="new precomputed features, one row per catalog row (repeatable; a modality left out is kept)")
    u.add_argument("--add-new", action="store_true", help="add rows whose id is not in the index (default: refused)")
    u.add_argument("--remove-missing", action="store_true",
                   help="remove the items the file does not name (a skipped row names its item): with --add-new, "
                        "the index then holds the file's items, as a full catalog export lists them")
    u.add_argument("--dry-run", action="store_true",
                   help="check the file and say what would change (by content hashes), encoding and writing nothing")
    _catalog_change_opts(u, "skip bad rows, and rows of unknown ids (listed in INDEX/skipped.jsonl), instead of "
                            "failing")
    u.set_defaults(func=cmd_index_update)

    r = isub.add_parser("remove", help="remove items by id")
    r.add_argument("--index", required=True, type=Path, help="index or trained directory to remove from")
    r.add_argument("--item", required=True, nargs="+", action="extend", metavar="ID",
                   help="item ids (all must be in the index, or none is removed); may be repeated")
    _common(r)
    r.set_defaults(func=cmd_index_remove)

    inf = isub.add_parser("info", help="what a directory holds: items, users, index and search setting, "
                                       "modalities, encoders, training")
    inf.add_argument("--index", required=True, type=Path, help="index or trained directory")
    inf.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(inf)
    inf.set_defaults(func=cmd_index_info)

    rb = isub.add_parser("rebuild", help="build the FAISS index anew from the stored vectors with another factory "
                                         "(nothing is encoded or trained)")
    rb.add_argument("--index", required=True, type=Path, help="index or trained directory to rebuild in place")
    rb.add_argument("--factory", default=None,
                    help="auto (chosen again for today's item count), Flat, HNSW{M}, IVF{n},Flat, IVF{n},SQ8, "
                         "IVF{n},PQ{m} (default: the index's own, keeping its nprobe / efSearch)")
    _common(rb)
    rb.set_defaults(func=cmd_index_rebuild)

    t = isub.add_parser("tune", help="set the approximate index's search knob (IVF nprobe, HNSW efSearch) for a "
                                     "target recall, measured on the directory's own queries")
    t.add_argument("--index", required=True, type=Path, help="index or trained directory with an IVF or HNSW index")
    t.add_argument("--recall", type=_recall, default=None,
                   help="recall@k to reach against the index's exhaustive search (default 0.99)")
    t.add_argument("-k", type=_positive_int, default=None, help="the recall's cut-off (default 10)")
    t.add_argument("--sample", type=_positive_int, default=None,
                   help="random items (and, trained, users) to measure on (default 2000)")
    t.add_argument("--seed", type=_seed, default=None, help="seed of the sample (default 0)")
    knob = t.add_mutually_exclusive_group()
    knob.add_argument("--nprobe", type=_positive_int, help="set an IVF index's nprobe to this, without measuring")
    knob.add_argument("--ef-search", type=_positive_int, help="set an HNSW index's efSearch to this, without measuring")
    t.add_argument("--dry-run", action="store_true", help="measure (or check) only; leave the directory as it is")
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    _common(t)
    t.set_defaults(func=cmd_index_tune)

    s = sub.add_parser("similar", help="items similar to a catalog item")
    _query_opts(s)
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--item", nargs="+", action="extend", metavar="ID",
                   help="item id; several ids are answered in batches (with --json: JSON Lines, one "
                        "{\"item_id\", \"results\"} object an item)")
    which.add_argument("--all-items", action="store_true",
                   help="every item of the index, in batches: a related-items table of the whole catalog")
    s.add_argument("--by", choices=["index", "cosine"], default="index",
                   help="index: the index's ranking (a trained model's dot product, which favours popular items); "
                        "cosine: exact cosine of the item vectors (default index)")
    s.add_argument("--explain", action="store_true",
                   help="per result: its modality attention weights and per-modality similarity to the item")
    _filter_opts(s)
    _common(s)
    s.set_defaults(func=cmd_similar)

    x = sub.add_parser("explain", help="an item's attention weights and nearest neighbours per modality and fused")
    x.add_argument("--index", required=True, type=Path, help="index or trained directory")
    x.add_argument("--item", required=True, action=_Once, help="item id (one; given twice, a usage error)")
    x.add_argument("-k", type=_positive_int, default=5, help="neighbours per list (default 5)")
    x.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _common(x)
    x.set_defaults(func=cmd_explain)

    q = sub.add_parser("search", help="items matching a text or image query")
    _query_opts(q)
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", metavar="TEXT",
                   help="free-text query (repeatable: several queries are encoded together; with --json, JSON Lines, "
                        "one {\"query\", \"results\"} object a query)")
    g.add_argument("--queries", type=Path, metavar="FILE",
                   help="a UTF-8 file of text queries, one a line (always answered as a batch)")
    g.add_argument("--image", nargs="+", action="extend", metavar="FILE",
                   help="query image file(s); several are encoded together")
    q.add_argument("--device", help="encode the queries on this torch device (cpu, cuda, cuda:N; default cpu)")
    q.add_argument("--by", choices=["index", "content"], default="index",
                   help="index: as the directory places queries (a trained model's content path; default); content: "
                        "the cosine with the items' own text / image features alone, as the untrained content index "
                        "ranks (on a trained directory it keeps exact titles and product words)")
    _filter_opts(q)
    _common(q)
    q.set_defaults(func=cmd_search)

    from mmrec.config import ARCHITECTURE, TrainConfig, add_dataclass_options

    t = sub.add_parser("train", help="train the fused graph recommender and index its item vectors")
    t.add_argument("--interactions", required=True, type=Path, help="user_id, item_id[, rating, timestamp, split]")
    t.add_argument("--catalog", type=Path, help="items file (optional with --features; none: ID-only)")
    t.add_argument("--features", type=_features_arg, action="append", metavar="NAME=PATH.npy",
                   help="precomputed features, one row per item (repeatable)")
    t.add_argument("--out", required=True, type=Path, help="directory to create")
    t.add_argument("--split", default="auto", choices=["auto", "given", "random", "temporal"],
                   help="auto: the file's split column, else random 80/10/10 per user (default)")
    t.add_argument("--rating-threshold", type=_finite,
                    help="keep ratings >= this as positives (default: none, every row is a positive)")
    t.add_argument("--text-fields", type=_csv_list, action="extend",
                   help="comma-separated text columns (default: every column of text: strings, lists of strings)")
    t.add_argument("--image-field", help="column of image paths (default: 'image' if present)")
    t.add_argument("--image-root", type=Path, help="base for relative image paths (default: the catalog's folder)")
    _mask_opt(t)
    # (None when not given: a --text-encoder / --image-encoder / --max-length given without --catalog is refused,
    # even one naming the default)
    t.add_argument("--text-encoder",
                   help="as for index build: default (the default), none, a Hugging Face model dir, or a Hub name with "
                        "--allow-download")
    t.add_argument("--allow-download", action="store_true",
                   help="let --text-encoder name a Hugging Face Hub model to download (off: nothing is downloaded)")
    t.add_argument("--max-length", type=_max_length, help="text truncation in tokens (default 256)")
    t.add_argument("--image-encoder",
                   help="as for index build: default (the default), none, a torchvision name, or a Hugging Face "
                        "model dir")
    t.add_argument("--image-weights", type=Path, help="state-dict file for a torchvision image backbone")
    t.add_argument("--factory", default="auto",
                    help="FAISS factory for the trained item vectors (default auto: Flat below 100k items)")
    t.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid catalog rows (listed in OUT/skipped.jsonl), invalid interaction rows and "
                        "the rows of skipped items (counted in OUT/train_report.json) instead of failing")
    t.add_argument("--overwrite", action="store_true", help="replace OUT if it is an mmrec directory")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_options(t, TrainConfig)
    _cache_opts(t)
    _common(t)
    t.set_defaults(func=cmd_train)

    ft = sub.add_parser(
        "finetune", help="start from a trained model and train on a new catalog (different items and users)",
        description="Fine-tune a trained model on a new catalog: projection, fusion and (tuned) encoder weights "
                    "transfer, new items start from their content; users the source knows start from their source "
                    "embedding (--no-keep-users: at random), other users at random, and graph propagation hands "
                    "them their items' vectors from the first step. The catalog is "
                    "encoded with the source's encoders. Training options left out take the source model's "
                    "values from its config.json; architecture options ("
                    + ", ".join("--" + name.replace("_", "-") for name in ARCHITECTURE) + ") cannot change.",
    )
    ft.add_argument("--from", dest="source", required=True, type=Path, help="trained directory to start from")
    ft.add_argument("--interactions", required=True, type=Path, help="the new interactions")
    ft.add_argument("--catalog", type=Path, help="the new items file (optional with --features)")
    ft.add_argument("--features", type=_features_arg, action="append", metavar="NAME=PATH.npy",
                    help="precomputed features of the new items, the source's modality names and widths (repeatable)")
    ft.add_argument("--out", required=True, type=Path, help="directory to create")
    ft.add_argument("--split", default="auto", choices=["auto", "given", "random", "temporal"],
                    help="auto: the file's split column, else random 80/10/10 per user (default)")
    ft.add_argument("--rating-threshold", type=_finite,
                    help="keep ratings >= this as positives (default: none, every row is a positive)")
    ft.add_argument("--text-fields", type=_csv_list, action="extend", help="default: the source's; repeatable")
    ft.add_argument("--image-field", help="default: the source's")
    ft.add_argument("--image-root", type=Path, help="base for relative image paths (default: the catalog's folder)")
    _mask_opt(ft, remembered=True)
    ft.add_argument("--ignore-modality", action="append", metavar="NAME",
                    help="leave a modality of the new data out: one the source model never had, or one it had, "
                         "then masked for every item (repeatable)")
    ft.add_argument("--keep-users", action=argparse.BooleanOptionalAction, default=True,
                    help="users the source model knows (same id) start from their source embedding (default on; "
                         "--no-keep-users when the ids do not name the same people)")
    ft.add_argument("--factory", default="auto",
                    help="FAISS factory for the trained item vectors (default auto: Flat below 100k items)")
    ft.add_argument("--skip-invalid", action="store_true",
                    help="skip invalid catalog rows (listed in OUT/skipped.jsonl), invalid interaction rows and "
                         "the rows of skipped items (counted in OUT/train_report.json) instead of failing")
    ft.add_argument("--overwrite", action="store_true", help="replace OUT if it is an mmrec directory")
    ft.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_dataclass_options(ft, TrainConfig, default_from="the source model", fixed=ARCHITECTURE,
                          own_defaults={"cold_start": "0, whatever the source used: it describes the source's data"})
    _cache_opts(ft)
    _common(ft)
    ft.set_defaults(func=cmd_finetune)

    rc = sub.add_parser("recommend", help="top-k items for a user or a history of items (those items excluded)")
    _query_opts(rc)
    rc.add_argument("--user", nargs="+", action="extend", metavar="ID",
                    help="user id (a user the model trained on); with --history, that user's liked items followed "
                         "by the --history items are the history; several ids are recommended for in batches")
    rc.add_argument("--all-users", action="store_true",
                    help="every user of the training data (those it had no training row of are warned about), in batches; with --json, several users (or --all-users) "
                         "print JSON Lines, one {\"user_id\", \"results\"} object a user, where one user prints a list")
    rc.add_argument("--history", nargs="+", action="extend", metavar="ITEM",
                    help="item ids a user interacted with: anyone, including users the model never saw "
                         "(content indexes too)")
    rc.add_argument("--method", default="auto", choices=["auto", "fold-in", "mean"],
                    help="how --history becomes a user: least-squares fold-in against every item vector "
                         "or the mean of the history's vectors (default auto: fold-in for a trained "
                         "directory, mean for a content index)")
    rc.add_argument("--include-known", action="store_true",
                    help="do not exclude the user's known items and the --history items")
    rc.add_argument("--diversity", type=_fraction, default=0.0, metavar="W",
                    help="re-rank the top max(5k, 50) by maximal marginal relevance, W in [0, 1] trading relevance "
                         "for dissimilarity to the items already listed (default 0: off)")
    rc.add_argument("--explain", action="store_true",
                    help="per result: its modality attention weights and the user's history items most like it")
    rc.add_argument("--explain-items", type=_positive_int, default=None, metavar="N",
                    help="history items named per result with --explain (default 3)")
    _filter_opts(rc)
    _common(rc)
    rc.set_defaults(func=cmd_recommend)

    sv = sub.add_parser("serve", help="answer recommend / history / similar / search / item / explain / health as "
                                      "JSON over HTTP, the directory kept open (mmrec.server)")
    sv.add_argument("--index", required=True, type=Path, help="index or trained directory")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; there is no authentication: keep it behind your front end)")
    sv.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--device", help="encode text queries on this torch device (cpu, cuda, cuda:N; default cpu)")
    sv.add_argument("--reload", action=argparse.BooleanOptionalAction, default=True,
                    help="load the directory again when it changes on disk (index add / update / remove / rebuild / "
                         "tune, train --overwrite), checked at most once a second (default on)")
    sv.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True,
                    help="load the text encoder at start, and a reloaded directory's changed one before it serves, "
                         "instead of at the first text query, which holds up every request meanwhile (default on)")
    _common(sv)
    sv.set_defaults(func=cmd_serve)

    ev = sub.add_parser("evaluate", help="full-ranking metrics of a trained directory")
    ev.add_argument("--index", required=True, type=Path, help="trained directory")
    ev.add_argument("--interactions", required=True, type=Path,
                    help="interaction file (the training file reproduces the training split)")
    ev.add_argument("--split", choices=["valid", "test"], help="the split evaluated (default test)")
    ev.add_argument("--split-rule", choices=["auto", "given", "random", "temporal"],
                    help="how the split is made (default: the rule the model was trained with, with its seed)")
    ev.add_argument("--mask", choices=["all", "train"], help="default: the training config's")
    ev.add_argument("--cold-start", action="store_true",
                    help="rank the items held out of training (train --cold-start F) for the users who had them, "
                         "their rows of every split (not with --split or --mask)")
    ev.add_argument("--batch-size", type=_positive_int,
                    help="users scored at once, each batch a users x items score matrix, fewer where that "
                         "matrix would pass 256 MB (default: the model's eval_batch_size)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _common(ev)
    ev.set_defaults(func=cmd_evaluate)
    return parser


class _UntilGone:
    """``sys.stderr`` that stops writing once its reader has gone (``mmrec train 2>&1 | head``):
    a progress bar's write raised BrokenPipeError, which ended the work early with exit 0, as a
    reader of stdout stopping early does. Logs and bars are then dropped; the work goes on."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.gone = stream, False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except (BrokenPipeError, ValueError):  # (ValueError: a closed file)
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self.gone = True

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


LOG_BAR_SECONDS = 30  # the least time between two redraws of a progress bar that goes to no terminal


class _BarsAsLines:
    """``sys.stderr`` bound for no terminal (a log file, a pipe): each progress-bar redraw becomes
    a line of its own, and the carriage returns, blanking spaces and cursor moves that redraw a bar
    in place on a terminal are dropped. A log file read back (``less``, an editor, ``grep``) had
    every bar state and log line run together on one line, between carriage returns and spaces.

    tqdm draws a bar as ``"\\r" + text + padding``, clears it as ``"\\r" + spaces`` then ``"\\r"``,
    ends it with ``"\\n"`` and moves between stacked bars with newlines and ``ESC [A``; everything
    else (log lines, errors) passes unchanged."""

    _UP = "\x1b[A"  # tqdm's cursor-up, between stacked bars

    def __init__(self, stream: Any) -> None:
        self._stream, self._line_start, self._last_bar = stream, True, None

    def write(self, text: str) -> int:
        if text.startswith("\r"):
            line = text.strip("\r").rstrip(" ")
            if "\r" in line or "\n" in line:  # not a bar's redraw after all: kept as written
                self._put(text)
            elif line and line != self._last_bar:  # (a bar's last state is drawn again when it closes)
                self._put(("" if self._line_start else "\n") + line + "\n")
                self._last_bar = line
        elif not text.replace(self._UP, "").strip("\n") and (self._line_start or self._UP in text):
            pass  # a bar's line already ended, or the moves between stacked bars; so also a blank line
        elif text:
            self._put(text)
        return len(text)

    def _put(self, text: str) -> None:
        self._stream.write(text)
        self._line_start, self._last_bar = text.endswith("\n"), None

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's own
        return getattr(self._stream, name)


class _LogBesideBars(logging.StreamHandler):
    """Log lines written around the progress bars drawn on the same stream: a bar is cleared, the
    line written, the bar drawn again (tqdm's ``write``), where a log line used to start where the
    bar's unfinished line ended (``training: 12%|... INFO mmrec.train: epoch 2 ...``). Where the
    stream turns each bar into lines of its own (:class:`_BarsAsLines`, no terminal), the line is
    written as it is: a bar drawn again after each log line would double a log file's lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if isinstance(self.stream, _BarsAsLines):
                self.stream.write(self.format(record) + self.terminator)
            else:
                from tqdm import tqdm

                tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 -- as logging.StreamHandler: a failed log line is reported, not raised
            self.handleError(record)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no such method, or a closed stream
        return False


def main(argv: Sequence[str] | None = None) -> int:
    streams = sys.stdout, sys.stderr
    # A stream closed when the process started (`mmrec ... >&-`) is None: written to nowhere, as a
    # reader that went away is (it failed with AttributeError: 'NoneType' object has no attribute 'write').
    sys.stdout = sys.stdout or open(os.devnull, "w")  # noqa: SIM115 -- for the process's life
    sys.stderr = _UntilGone(sys.stderr or open(os.devnull, "w"))  # noqa: SIM115
    if not _is_terminal(sys.stderr):
        # Progress bars written to a log file or a pipe: one redraw every LOG_BAR_SECONDS, not ten a second
        # (tqdm reads this when it is first imported, which no command has done yet; the user's own wins),
        # each a line of its own.
        os.environ.setdefault("TQDM_MININTERVAL", str(LOG_BAR_SECONDS))
        sys.stderr = _BarsAsLines(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.debug, args.quiet = args.debug or args.debug_all, args.quiet or args.quiet_all
    if not args.debug:  # torch_geometric's import-time use of a deprecated torch API is not the user's concern
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    if not any(isinstance(h, _LogBesideBars) for h in logging.getLogger().handlers):
        handler = _LogBesideBars(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger().setLevel(level)  # also when main() runs more than once in a process
    logging.getLogger("faiss").setLevel(logging.DEBUG if args.debug else logging.WARNING)  # its loader chatter
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`mmrec ... | head`): not an error
        # Python would report the pipe again when it flushes stdout at exit; send that flush nowhere.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file descriptor (captured): nothing to flush
            pass
        return 0
    except Exception as e:  # every failure is reported; the traceback only on request
        if args.debug:
            traceback.print_exc()
        elif _user_error(e):
            print(f"error: {e}", file=sys.stderr)
        else:
            print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
