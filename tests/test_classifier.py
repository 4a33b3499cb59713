"""`iau_vision_learner`: IAU blocks in a fastai image classifier, on scikit-learn's handwritten digits."""
import json, subprocess, sys
import numpy as np, pytest, torch
from fastai.vision.all import (ImageDataLoaders, DataBlock, ImageBlock, CategoryBlock, MultiCategoryBlock,
                               RegressionBlock, PILImageBW, Resize, RandomSplitter, get_image_files, parent_label,
                               accuracy, accuracy_multi, ClassificationInterpretation, load_learner,
                               CrossEntropyLossFlat, BCEWithLogitsLossFlat)
from iaunet_fastai.core import ReIDInputError
from iaunet_fastai.classifier import iau_vision_learner, digits_folder, CIAUBlock
from iaunet_fastai.layers import IAUBlock

SIZE = 24           # the smallest convenient size: stage 3 of a ResNet is 2×2 at 17 px and up

@pytest.fixture(scope='module')
def digits(tmp_path_factory): return digits_folder(tmp_path_factory.mktemp('classifier')/'digits')

def digit_dls(path, size=SIZE, bs=32):
    return ImageDataLoaders.from_folder(path, valid_pct=0.2, seed=42, item_tfms=Resize(size), bs=bs, num_workers=0)

def few_dls(path, blocks=(ImageBlock, CategoryBlock), get_y=parent_label, n=96, bs=16):
    "Loaders on the first `n` digits (a quarter for validation): for tests of what works, not of accuracy."
    return DataBlock(blocks=blocks, get_items=lambda p: get_image_files(p)[::1797 // n][:n], get_y=get_y,
                     splitter=RandomSplitter(0.25, seed=0), item_tfms=Resize(SIZE)).dataloaders(path, bs=bs, num_workers=0)

def quiet_fit(learn, n_epoch=1, lr=1e-3, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n_epoch, lr, **kw)
    return learn

@pytest.fixture(scope='module')
def trained(digits):
    "resnet18 with IAU blocks after stages 2 and 3, from scratch on the digits (1,437 train images, 24 px)."
    torch.manual_seed(0)
    learn = iau_vision_learner(digit_dls(digits), 'resnet18', pretrained=False, metrics=accuracy)
    return quiet_fit(learn, 4, 1e-2)

def test_digits_from_scratch_reach_95_percent(trained):
    assert isinstance(trained.loss_func, CrossEntropyLossFlat)
    assert [type(trained.model[0].iau[k]) for k in ('layer2', 'layer3')] == [IAUBlock, IAUBlock]
    loss, acc = trained.validate()
    assert acc >= 0.95, acc

def test_export_then_load_learner_in_a_new_process(trained, tmp_path):
    f = tmp_path/'digits.pkl'
    trained.export(f)
    files = sorted(get_image_files(trained.dls.path))[::150]
    probs, _ = trained.get_preds(dl=trained.dls.test_dl(files))
    code = ("import json, sys; from fastai.vision.all import load_learner; learn = load_learner(sys.argv[1]); "
            "files = sys.argv[2:]; p, _ = learn.get_preds(dl=learn.dls.test_dl(files)); "
            "print(json.dumps(dict(vocab=list(map(str, learn.dls.vocab)), probs=p.tolist(), "
            "pred=learn.predict(files[0])[0])))")
    out = subprocess.run([sys.executable, '-c', code, str(f), *map(str, files)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got['vocab'] == list(map(str, trained.dls.vocab))
    np.testing.assert_allclose(np.array(got['probs']), probs.numpy(), atol=1e-5)
    assert got['pred'] == trained.dls.vocab[probs[0].argmax()]

def test_interpretation_and_tta(trained):
    interp = ClassificationInterpretation.from_learner(trained)
    cm = interp.confusion_matrix()
    assert cm.shape == (10, 10) and cm.sum() == len(trained.dls.valid_ds) and np.trace(cm) / cm.sum() >= 0.95
    losses, idx = interp.top_losses(5)
    assert len(idx) == 5 and (losses[:-1] >= losses[1:]).all()
    assert all(a != b and n >= 1 for a, b, n in interp.most_confused(min_val=1))
    preds, targs = trained.tta(n=1)
    assert preds.shape == (len(trained.dls.valid_ds), 10) and accuracy(preds, targs) >= 0.9

def test_frozen_learner_trains_blocks_and_head_not_backbone(digits):
    learn = iau_vision_learner(few_dls(digits), 'resnet18', blocks='ciau', pretrained=False)
    assert isinstance(learn.model[0].iau['layer3'], CIAUBlock)
    learn.freeze()
    bb, blk, head = (learn.model[0].backbone.conv1.weight, learn.model[0].iau['layer2'].ciau.update[0].weight,
                     learn.model[1][-1].weight)
    before = [p.detach().clone() for p in (bb, blk, head)]
    quiet_fit(learn, 1, 1e-2)
    assert torch.equal(bb, before[0]) and not torch.equal(blk, before[1]) and not torch.equal(head, before[2])
    lrs = learn.lr_find(num_it=5, show_plot=False)
    assert lrs.valley > 0

def test_multi_label(digits):
    labels = lambda f: ['even' if int(f.parent.name) % 2 == 0 else 'odd'] + (['big'] if int(f.parent.name) >= 5 else [])
    dls = few_dls(digits, (ImageBlock, MultiCategoryBlock), get_y=labels)
    learn = quiet_fit(iau_vision_learner(dls, 'resnet18', pretrained=False, metrics=accuracy_multi))
    assert isinstance(learn.loss_func, BCEWithLogitsLossFlat)
    dec, _, probs = learn.predict(get_image_files(digits)[0])
    assert list(learn.dls.vocab) == ['big', 'even', 'odd'] and probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()

def test_regression_with_y_range(digits):
    dls = few_dls(digits, (ImageBlock, RegressionBlock), get_y=lambda f: float(f.parent.name))
    learn = quiet_fit(iau_vision_learner(dls, 'resnet18', pretrained=False, n_out=1, y_range=(-0.5, 9.5)))
    assert isinstance(learn.loss_func.func, torch.nn.MSELoss)      # fastai's MSELossFlat
    preds, _ = learn.get_preds()
    assert preds.shape == (len(dls.valid_ds), 1) and (preds > -0.5).all() and (preds < 9.5).all()

def test_one_channel_images(digits):
    dls = few_dls(digits, (ImageBlock(PILImageBW), CategoryBlock))
    with pytest.raises(ReIDInputError, match='pass n_in=1'): iau_vision_learner(dls, 'resnet18', pretrained=False)
    learn = quiet_fit(iau_vision_learner(dls, 'resnet18', pretrained=False, n_in=1))
    assert learn.model[0].backbone.conv1.in_channels == 1 and learn.predict(get_image_files(digits)[0])[2].shape == (10,)

def test_too_small_maps_are_refused_at_creation(digits):
    dls = digit_dls(digits, size=16)
    with pytest.raises(ReIDInputError, match=r'stage 3 \(layer3\) gives a 1×1 map at 16×16 images.*at least 17×17'):
        iau_vision_learner(dls, 'resnet18', pretrained=False)
    iau_vision_learner(dls, 'resnet18', iau_stages=(2,), pretrained=False)     # stage 2 is 2×2 at 16 px

def test_channels_last_bf16_and_compiled_blocks(digits):
    "channels_last and bf16 autocast with both kinds of block, through fastai's loop; `compile='iau'` compiles them (one small block: CPU compiles are slow)."
    learn = iau_vision_learner(few_dls(digits), 'resnet18', pretrained=False).to_channelslast().to_bf16()
    quiet_fit(learn)
    assert all(np.isfinite(v) for v in learn.validate())
    learn = iau_vision_learner(few_dls(digits, n=48), 'resnet18', iau_stages=(3,), blocks='ciau', pretrained=False,
                               compile='iau').to_channelslast().to_bf16()
    quiet_fit(learn)
    assert learn.model[0].iau['layer3'].compiled and all(np.isfinite(v) for v in learn.validate())
